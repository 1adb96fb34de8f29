"""Privacy commands: ``pollen keys`` (CKKS keys) and ``pollen attack`` (attacks as measurements).

Listed in ``pollen.cli.COMMANDS``; thin wrappers over ``pollen.privacy.he`` and
``pollen.attacks``.
"""

from __future__ import annotations

import argparse


def keys_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write secret.ctx, public.ctx and keys.json to")
    p.add_argument("--poly-modulus-degree", type=int, default=8192, help="CKKS ring degree; slots per ciphertext = half of it (default: 8192)")
    p.add_argument("--coeff-bits", default="60,60", help="bit sizes of the coefficient-modulus primes (default: 60,60: additions only)")
    p.add_argument("--scale-bits", type=int, default=36, help="CKKS scale 2^bits: precision ~2^-bits, sums must stay below 2^(first prime - bits - 1) (default: 36)")


def keys_cmd(args: argparse.Namespace) -> int:
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


def attack_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="attack_kind", metavar="ATTACK", required=True)
    m = sub.add_parser("membership", help="loss-threshold and offline-LiRA membership inference on the final model")
    m.add_argument("--run", required=True, metavar="RUN_DIR", help="a finished run directory (runs/<name>)")
    m.add_argument("--candidates", type=int, default=1000, help="members and non-members drawn (each) (default: 1000)")
    m.add_argument("--shadows", type=int, default=4, help="LiRA shadow models (0: loss threshold only) (default: 4)")
    m.add_argument("--shadow-epochs", type=int, default=None, help="epochs per shadow model (default: the target's passes over a record, at most 10)")
    m.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the confidence intervals (default: 200)")
    m.add_argument("--fpr", type=float, default=1e-3, help="the low false-positive rate TPR is reported at (default: 0.001)")
    m.add_argument("--seed", type=int, default=0, help="seed of the candidate draw, shadows and bootstrap (default: 0)")
    i = sub.add_parser("inversion", help="gradient inversion (DLG / inverting gradients) of one party's update")
    i.add_argument("--run", required=True, metavar="RUN_DIR", help="a run directory (its config and initial model are used)")
    i.add_argument("--party", default="0", help="the party whose update is attacked (default: 0)")
    i.add_argument("--batch", type=int, default=1, help="records in the attacked step (default: 1)")
    i.add_argument("--steps", type=int, default=500, help="optimisation steps of the attack (default: 500)")
    i.add_argument("--protection", choices=("none", "dp", "sum"), default="none",
                   help="what the coordinator sees: the plain update, a DP-noised one, or a sum of parties (secure aggregation / HE)")
    i.add_argument("--noise-multiplier", type=float, default=1.0, help="--protection dp: noise std / clip norm (default: 1.0)")
    i.add_argument("--clip-norm", type=float, default=None, help="--protection dp: L2 clip of the update (default: its own norm)")
    i.add_argument("--sum-of", type=int, default=10, help="--protection sum: parties in the sum (default: 10)")
    i.add_argument("--seed", type=int, default=0, help="seed of the attack's initialisation (default: 0)")


def attack_cmd(args: argparse.Namespace) -> int:
    from pollen.attacks.privacy_audit import LoadedRun, attack_inversion, attack_membership, write_result

    run = LoadedRun.load(args.run)
    if args.attack_kind == "membership":
        res = attack_membership(run, args.candidates, args.shadows, args.shadow_epochs, args.bootstrap, args.fpr, args.seed)
        print(f"membership inference on {run.run_dir.name}: {res['candidates_per_side']} members (party training data) "
              f"vs {res['candidates_per_side']} non-members (test set)")
        print(f"| attack | AUC [95% CI] | TPR at {args.fpr:.1%} FPR [95% CI] |\n| --- | --- | --- |")
        for name, r in res["attacks"].items():
            a, t = r["auc"], r["tpr_at_fpr"]
            print(f"| {name} | {a['value']:.4f} [{a['low']:.4f}, {a['high']:.4f}] | {t['value']:.4f} [{t['low']:.4f}, {t['high']:.4f}] |")
        for name, r in res["attacks"].items():
            if "dp_bound" in r:
                b = r["dp_bound"]
                verdict = "holds" if b["holds"] else "VIOLATED"
                print(f"{name}: DP bound TPR ≤ e^ε·FPR + δ (ε={b['epsilon']:.3g}, δ={b['delta']:.3g}) {verdict}; "
                      f"tightest point FPR={b['worst_fpr']:.4f} TPR={b['worst_tpr']:.4f} (TPR − bound {b['worst_excess']:+.4f})")
        if res["privacy"] is None:
            print("the run has no ε in its history (trained without DP): no DP bound to check")
    else:
        res = attack_inversion(run, args.party, args.batch, args.steps, args.protection, args.noise_multiplier,
                               args.clip_norm, args.sum_of, args.seed)
        print(f"gradient inversion of party {res['party']}'s update ({res['protection']}): PSNR {res['psnr_db']:.1f} dB, "
              f"labels right {res['label_correct']:.0%}, gradient cosine distance {res['gradient_distance']:.3g}")
        print("attacker knows: " + "; ".join(res["attacker_knows"]))
    path = write_result(run.run_dir, args.attack_kind, res)
    print(f"written to {path}")
    return 0


def audit_args(p: argparse.ArgumentParser) -> None:
    from pollen.cli import SIMULATE_SECTIONS, add_config_flags

    p.add_argument("--overwrite", action="store_true", help="replace the run already in runs/<name> (default: refuse)")
    add_config_flags(p, SIMULATE_SECTIONS)


def audit_cmd(args: argparse.Namespace) -> int:
    """Train once with canaries; print the empirical lower bound on ε beside the accountant's ε."""
    from pollen.cli import config_from_args
    from pollen.config import make_config, merge
    from pollen.privacy.canaries import unit_of
    from pollen.simulation import simulate
    from pollen.telemetry.history import read_history
    from pollen.telemetry.report import privacy_summary

    cfg = config_from_args(args)
    if cfg.privacy.audit_canaries == 0:  # the audit's own default: 1,000 records, or a tenth of the parties
        m = 1000 if unit_of(cfg) == "record" else max(2, cfg.data.parties // 10)
        # only what the user set, plus the canaries: the DP recipes still fill the rest
        explicit = {name: section.model_dump(include=section.model_fields_set)
                    for name, section in cfg if section.model_fields_set}
        cfg = make_config(merge(explicit, {"privacy": {"audit_canaries": m}}))
    result = simulate(cfg, overwrite=args.overwrite)
    s = privacy_summary(read_history(result.run_dir))
    analytic = "∞ (no DP)" if s["epsilon_max"] is None else f"{s['epsilon_max']:.3f}"
    print(f"one-run audit of {result.run_dir.name} (Steinke, Nasr, Jagielski 2023), unit: {s['privacy_unit']}")
    print(f"  empirical ε ≥ {s['epsilon_empirical']:.3f} with {100 * s['epsilon_empirical_confidence']:.0f} % confidence "
          f"(δ = {s['delta'] if s['delta'] is not None else 1e-5:g}; {s['audit_correct']} of {s['audit_guesses']} guesses "
          f"right, {s['audit_canaries']} canaries)")
    print(f"  accountant's ε = {analytic}" + (f" ({s['accountant']})" if s["accountant"] else ""))
    if s["audit_violation"]:
        print(f"  BUG: the empirical lower bound exceeds the accountant's ε: the mechanism or its accountant is wrong; "
              f"details in {result.run_dir}/report.md")
        return 3
    print(f"written to {result.run_dir}/ (history.jsonl: epsilon_empirical; report.md: Privacy)")
    return 0
