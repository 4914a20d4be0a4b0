"""`crs-cds keys new`: a key pair for a CDS client (to test an authenticated deployment)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cds.auth.signing import NEW_KEY_ALGORITHMS, new_client_key, write_client_key

keys = typer.Typer(help="Key pairs for CDS clients.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add `keys` to the `crs-cds` application."""
    app.add_typer(keys, name="keys")


@keys.command("new")
def new(
    out: Annotated[Path, typer.Option(help="Directory for private-key.pem and jwks.json.")],
    alg: Annotated[str, typer.Option(help="ES384 (P-384) or RS384 (RSA 3072).")] = "ES384",
    kid: Annotated[
        str | None, typer.Option(help="Key id (default: the key's RFC 7638 thumbprint).")
    ] = None,
) -> None:
    """Write a new private key (PEM, mode 0600) and its public JWK Set."""
    if alg not in NEW_KEY_ALGORITHMS:
        typer.echo(f"error: --alg must be one of {', '.join(NEW_KEY_ALGORITHMS)}", err=True)
        raise typer.Exit(2)
    key = new_client_key(alg, kid)
    try:
        private_path, jwks_path = write_client_key(key, out)
    except (FileExistsError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"private key: {private_path} (keep it secret; mode 0600)")
    typer.echo(f"public JWK Set: {jwks_path} (publish it, or put it inline in the trusted clients)")
    typer.echo(f"kid: {key.kid}  alg: {key.alg}")
