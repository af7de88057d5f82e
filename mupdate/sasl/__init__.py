"""SASL: sans-I/O mechanisms and the credentials they are checked against."""

from mupdate.sasl.credentials import (
    CredentialsError,
    CredentialsFile,
    UserCredential,
    hash_password,
    make_credential,
)
from mupdate.sasl.mechanisms import (
    PLAINTEXT_MECHANISMS,
    SUPPORTED_MECHANISMS,
    ClientMechanism,
    ServerMechanism,
    client_mechanism,
    server_mechanism,
)
from mupdate.sasl.saslauthd import (
    ReplyDecoder,
    SaslauthdError,
    SaslauthdReply,
    encode_request,
)
from mupdate.sasl.scram import (
    PLUS_MECHANISMS,
    SCRAM_MECHANISMS,
    ScramClient,
    ScramKeys,
    ScramServer,
    make_keys,
    tls_server_end_point,
)
from mupdate.sasl.steps import Challenge, CheckPassword, Failure, Step, Success

__all__ = [
    "PLAINTEXT_MECHANISMS",
    "PLUS_MECHANISMS",
    "SCRAM_MECHANISMS",
    "SUPPORTED_MECHANISMS",
    "Challenge",
    "CheckPassword",
    "ClientMechanism",
    "CredentialsError",
    "CredentialsFile",
    "Failure",
    "ReplyDecoder",
    "SaslauthdError",
    "SaslauthdReply",
    "ScramClient",
    "ScramKeys",
    "ScramServer",
    "ServerMechanism",
    "Step",
    "Success",
    "UserCredential",
    "client_mechanism",
    "encode_request",
    "hash_password",
    "make_credential",
    "make_keys",
    "server_mechanism",
    "tls_server_end_point",
]
