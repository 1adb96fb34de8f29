"""Privacy commands: ``pollen keys`` (CKKS keys) and ``pollen attack`` (attacks as measurements).

Imported by ``pollen.cli._load_plugins``; thin wrappers over ``pollen.privacy.he`` and
``pollen.attacks``.
"""

from __future__ import annotations

import argparse

from pollen.cli import command


@command("keys", "generate CKKS keys for --he: secret.ctx for the parties, public.ctx for the server")
def _keys_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write secret.ctx, public.ctx and keys.json to")
    p.add_argument("--poly-modulus-degree", type=int, default=8192, help="CKKS ring degree; slots per ciphertext = half of it (default: 8192)")
    p.add_argument("--coeff-bits", default="60,60", help="bit sizes of the coefficient-modulus primes (default: 60,60: additions only)")
    p.add_argument("--scale-bits", type=int, default=36, help="CKKS scale 2^bits: precision ~2^-bits, sums must stay below 2^(first prime - bits - 1) (default: 36)")


@_keys_args.handler
def _keys(args: argparse.Namespace) -> int:
    from pollen.errors import ConfigError
    from pollen.privacy.he import write_keys

    try:
        bits = tuple(int(b) for b in args.coeff_bits.split(","))
    except ValueError:
        raise ConfigError(f"--coeff-bits expects comma-separated integers like 60,60; got {args.coeff_bits!r}") from None
    paths = write_keys(args.out, poly_modulus_degree=args.poly_modulus_degree, coeff_bits=bits, scale_bits=args.scale_bits)
    print(f"wrote {paths['secret']} (secret key: give it to the parties only, never to the server)")
    print(f"wrote {paths['public']} (public context: the server and the parties)")
    print(f"wrote {paths['info']} (parameters)")
    print(f"use: pollen simulate --he --he-keys {args.out} …")
    return 0
