"""``vlgraph-keys``: make API keys and the profile entries that store them as hashes.

    vlgraph-keys new NAME [--limit LIMIT]   # a new random key, printed once, and its entry
    vlgraph-keys hash NAME [--limit LIMIT]  # the entry of a key read from stdin

The key itself goes to the client (and, if you prefer the environment to the profile, into
``VLGRAPH_API_KEYS`` as ``NAME:KEY``); only the entry goes into the profile's
``access.keys``. Keys are read from stdin, never from arguments, so they stay out of shell
histories and process lists.
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys

from vlgraph.access_config import KEY_NAME_PATTERN, KEYS_ENV, MIN_KEY_CHARS, hash_key

#: Prefix of generated keys: makes a leaked key easy to recognise (and to scan for).
KEY_PREFIX = "vlg-"


def new_key() -> str:
    """A new API key: 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def profile_entry(name: str, key: str, limit: str | None) -> str:
    """The ``access.keys`` entry of ``key`` (its hash, never the key), as YAML."""
    fields = f"name: {name}, sha256: {hash_key(key)}"
    if limit:
        fields += f", limit: {limit}"
    return f"- {{{fields}}}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vlgraph-keys``."""
    parser = argparse.ArgumentParser(prog="vlgraph-keys", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command, help_text in (
        ("new", "make a new key and print it once, with its profile entry"),
        ("hash", "print the profile entry of a key read from stdin"),
    ):
        sub = commands.add_parser(command, help=help_text)
        sub.add_argument("name", help="the key's name, shown in metrics and logs")
        sub.add_argument("--limit", help="a limit named under access.limits")
    args = parser.parse_args(argv)
    if not re.match(KEY_NAME_PATTERN, args.name):
        parser.error("NAME: letters, digits, '.', '_' or '-', up to 64 characters")
    if args.command == "new":
        key = new_key()
        print(f"key (give it to the client; it is not stored anywhere): {key}")
        print(f"environment form: {KEYS_ENV}={args.name}:{key}")
    else:
        key = sys.stdin.readline().strip()
        if len(key) < MIN_KEY_CHARS:
            parser.error(f"the key read from stdin must be at least {MIN_KEY_CHARS} characters")
    print("profile entry (under access.keys):")
    print(f"  {profile_entry(args.name, key, args.limit)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
