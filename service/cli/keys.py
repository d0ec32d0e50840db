"""``ledger keys``: the ledger's signing key — make one, print its public half to pin."""

from __future__ import annotations

import argparse
import sys


def _keys_generate(args: argparse.Namespace) -> int:
    from ledger.jetstream.signing import SigningKey

    try:
        key = SigningKey.create(args.file)
    except FileExistsError:
        raise SystemExit(f"{args.file} exists: a signing key is never overwritten (the ledger's history is signed with it)") from None
    sys.stdout.write(key.public_pem())
    print(
        f"signing key {key.key_id} written to {args.file} (mode 0600): give it to serve as LEDGER_SIGNING_KEY_FILE; "
        "pin the public key above for ledger verify (--trust-key), outside the ledger's data directory",
        file=sys.stderr,
    )
    return 0


def _keys_public(args: argparse.Namespace) -> int:
    from ledger.jetstream.signing import PublicKey
    from service.bootstrap import DEV_SIGNING_KEY

    path = args.signing_key_file or args.data_dir / DEV_SIGNING_KEY
    if not path.exists():
        raise SystemExit(f"no signing key at {path}: give --signing-key-file (LEDGER_SIGNING_KEY_FILE) or the ledger's --data-dir")
    try:
        key = PublicKey.load(path)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    sys.stdout.write(key.pem())
    print(f"key id {key.key_id} ({path})", file=sys.stderr)
    return 0
