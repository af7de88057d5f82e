"""SASL: sans-I/O mechanisms and the credentials they are checked against."""

from mupdate.sasl.credentials import CredentialsError, CredentialsFile, hash_password
from mupdate.sasl.mechanisms import (
    PLAINTEXT_MECHANISMS,
    Challenge,
    CheckPassword,
    ClientMechanism,
    Failure,
    ServerMechanism,
    client_mechanism,
    server_mechanism,
)

__all__ = [
    "PLAINTEXT_MECHANISMS",
    "Challenge",
    "CheckPassword",
    "ClientMechanism",
    "CredentialsError",
    "CredentialsFile",
    "Failure",
    "ServerMechanism",
    "client_mechanism",
    "hash_password",
    "server_mechanism",
]
