"""Subcommands of the inference package: ``fit`` (more are added by the hand-off work)."""

from __future__ import annotations

import argparse
import sys


def add_init_argument(parser: argparse.ArgumentParser) -> None:
    """``--init``, shared by every command that fits."""
    parser.add_argument(
        "--init",
        choices=("laplace", "map", "support_point"),
        default="map",
        help="chains start at the posterior mode (map, the default), also sample in "
        "coordinates whitened by its curvature there (laplace: faster warm-up on ~100K "
        "rows), or start jittered around the priors' centres (support_point)",
    )


HOST_BOUND_HELP = (
    "cycle only: also fit the scheduler regression to the traced scheduler times and price "
    "each step as the soft max of its GPU time and scheduler time + launch"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands."""
    fit = subparsers.add_parser(
        "fit",
        help="fit the hierarchical model by NUTS and save the posterior",
        description="Fit the hierarchical step-time model on the training rows of a split.",
    )
    fit.add_argument("--data", required=True, help="steps.parquet from `steptime prep`")
    fit.add_argument("--target", choices=("cycle", "schedule"), default="cycle")
    fit.add_argument(
        "--split", help="split_indices.json from `steptime split` (all rows if absent)"
    )
    fit.add_argument(
        "--split-name",
        default="stratified",
        help="which split's train part to fit: stratified, temporal, lomo:<model>, lowo:<workload>",
    )
    fit.add_argument("--out", required=True, help="folder for posterior.nc and model.json")
    fit.add_argument("--draws", type=int, default=1000)
    fit.add_argument("--tune", type=int, default=1000)
    fit.add_argument("--chains", type=int, default=4)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--sampler", choices=("nutpie", "pymc"), default="nutpie")
    fit.add_argument("--target-accept", type=float, default=0.95, help="NUTS step-size target")
    add_init_argument(fit)
    fit.add_argument("--hardware", default="h100-sxm", help="shipped name or JSON file")
    fit.add_argument(
        "--model-config-dir",
        action="append",
        default=[],
        help="folder of config.json files for models not shipped with the package",
    )
    fit.add_argument("--max-rows", type=int, help="fit a seeded random subset of the training rows")
    fit.add_argument("--host-bound", action="store_true", help=HOST_BOUND_HELP)
    fit.add_argument("--no-progress", action="store_true")
    fit.set_defaults(handler=run_fit)
    register_handoff(subparsers)


def run_fit(args: argparse.Namespace) -> int:
    import numpy as np

    from data_prep.dataset import load_steps
    from data_prep.splits import load_splits, select_rows, subsample_rows
    from diagnostics.convergence import convergence_summary, format_convergence
    from inference.estimator import StepTimeModel
    from models.priors import DEFAULT_PRIORS

    try:
        steps = load_steps(args.data)
        if args.split:
            rows = select_rows(steps, load_splits(args.split), args.split_name, "train")
            rows = np.asarray(rows, dtype=bool)
        else:
            rows = np.ones(len(steps), dtype=bool)
    except (OSError, ValueError, KeyError) as err:
        print(f"steptime fit: {err}", file=sys.stderr)
        return 2
    rows = subsample_rows(rows, args.max_rows, args.seed)
    if args.host_bound and args.target != "cycle":
        print("steptime fit: --host-bound applies to --target cycle only", file=sys.stderr)
        return 2
    priors = DEFAULT_PRIORS[args.target]
    model = StepTimeModel(
        target=args.target,
        priors=priors.with_host() if args.host_bound else priors,
        hardware=args.hardware,
        model_config_dirs=tuple(args.model_config_dir),
    )
    print(
        f"fitting {args.target} on {int(rows.sum())} rows "
        f"({args.split_name if args.split else 'all rows'}), "
        f"{args.chains} chains × {args.draws} draws, sampler {args.sampler}",
        file=sys.stderr,
    )
    model.fit(
        steps,
        rows,
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        seed=args.seed,
        sampler=args.sampler,
        progressbar=not args.no_progress,
        target_accept=args.target_accept,
        init=args.init,
    )
    folder = model.save(args.out)
    attrs = model.idata_.posterior.attrs
    print(f"saved {folder} (data hash {attrs['data_hash']}, {attrs['sampling_seconds']} s)")
    summary = convergence_summary(model.idata_)
    print(format_convergence(summary))
    return 0


# --- simulator hand-off: export, predict, replay -------------------------------------------


def register_handoff(subparsers: argparse._SubParsersAction) -> None:
    """``export``, ``predict`` and ``replay``."""
    export = subparsers.add_parser(
        "export",
        help="write the compact JSON artifact a simulator loads (docs/artifact.md)",
        description="Thin a fit to a few hundred posterior draws and write steptime.json.",
    )
    export.add_argument("--fit", required=True, help="fit folder from `steptime fit`")
    export.add_argument("--out", required=True, help="artifact path, e.g. steptime.json")
    export.add_argument("--draws", type=int, default=400, help="posterior draws to keep")
    export.add_argument("--seed", type=int, default=0, help="seed of the thinning")
    export.set_defaults(handler=run_export)

    predict = subparsers.add_parser(
        "predict",
        help="predict one step's time from an artifact (median, mean, 5-95%% band)",
        description="Posterior-predictive step time (µs) of one batch from an artifact.",
    )
    predict.add_argument("--artifact", required=True)
    _add_model_arguments(predict)
    predict.add_argument(
        "--batch",
        required=True,
        help="comma-separated features, e.g. decode_reqs=32,prefill_tokens=0,kv_tokens=20000 "
        "(names: decode_reqs, prefill_reqs, prefill_tokens, decode_tokens, kv_tokens, "
        "running_reqs, waiting_reqs, new_kv_blocks; missing ones are 0)",
    )
    predict.add_argument("--workload", help="a workload of the fit (default: unseen workload)")
    predict.add_argument("--json", action="store_true", help="print a JSON object")
    predict.set_defaults(handler=run_predict)

    replay = subparsers.add_parser(
        "replay",
        help="run the scheduler twin with step times from the artifact vs its ground truth",
        description="Replay a workload through the scheduler twin with sampled step times "
        "and compare TTFT / ITL / E2E with the twin's own ground truth.",
    )
    replay.add_argument("--artifact", required=True)
    replay.add_argument("--workload", required=True, help="general, codegen, roleplay, reasoning")
    replay.add_argument(
        "--model",
        action="append",
        required=True,
        help="seed model name (repeatable; 'all' for the four seed models)",
    )
    replay.add_argument("--tp", type=int, help="TP degree (default: the seed deployment's)")
    replay.add_argument(
        "--time-scale",
        type=float,
        default=1 / 40,
        help="multiplier of the workload's stage durations (default 1/40: the small preset)",
    )
    replay.add_argument("--seed", type=int, default=0)
    replay.add_argument(
        "--runs",
        type=int,
        default=1,
        help="replay seeds seed … seed+runs−1 (one posterior draw each) and pool their requests",
    )
    replay.add_argument(
        "--no-parameter-uncertainty",
        action="store_true",
        help="use the central parameters instead of one posterior draw for the run",
    )
    replay.add_argument("--no-step-noise", action="store_true", help="noise-free step times")
    replay.add_argument("--real-experiments", help="experiments.csv of the real runs")
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(handler=run_replay)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", help="a model of the fit (or a shipped seed model)")
    group.add_argument("--model-config", help="config.json of a model (unseen: hyperprior)")
    parser.add_argument(
        "--tp", type=int, help="tensor-parallel degree (required for --model-config)"
    )
    parser.add_argument(
        "--as-unseen",
        action="store_true",
        help="predict a fitted model through the hyperprior, as if the fit had not seen it",
    )


def _default_tp(model: str | None, tp: int | None) -> int:
    if tp is not None:
        return tp
    from data_prep.specs import canonical_model_name
    from data_prep.synth.workloads import SEED_DEPLOYMENTS

    deployment = SEED_DEPLOYMENTS.get(canonical_model_name(model or ""))
    if deployment is None:
        raise ValueError("give --tp (the tensor-parallel degree)")
    return deployment.tp


def parse_batch(text: str) -> dict[str, float]:
    """``decode_reqs=32,kv_tokens=20000`` → a feature mapping (validated names)."""
    from models.basis import BatchFeatures

    known = set(BatchFeatures.COLUMNS) | set(BatchFeatures.COLUMNS.values())
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise ValueError(
                f"bad batch item {item!r}: use NAME=VALUE with NAME among "
                f"{sorted(BatchFeatures.COLUMNS)}"
            )
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"bad batch value in {item!r}: not a number") from None
    if not out:
        raise ValueError("empty --batch")
    return out


def run_export(args: argparse.Namespace) -> int:
    from inference.export import ArtifactError, export_artifact

    try:
        path = export_artifact(args.fit, args.out, n_draws=args.draws, seed=args.seed)
    except (ArtifactError, OSError, ValueError, KeyError) as err:
        print(f"steptime export: {err}", file=sys.stderr)
        return 2
    import json

    artifact = json.loads(path.read_text())
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.3f} MB): target {artifact['target']}, "
        f"{artifact['draws']['n_draws']} draws, bases {', '.join(artifact['basis_names'])}, "
        f"models {', '.join(artifact['groups']['models'])}, "
        f"workloads {', '.join(artifact['groups']['workloads'])}"
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    import json

    from inference.export import ArtifactError
    from inference.sampler import StepTimeSampler

    try:
        batch = parse_batch(args.batch)
        sampler = StepTimeSampler.load(args.artifact)
        if args.model_config and args.tp is None:
            raise ValueError("--model-config needs --tp")
        tp = _default_tp(args.model, args.tp)
        result = sampler.predict(
            batch,
            model=args.model,
            tp=tp,
            workload=args.workload,
            model_config=args.model_config,
            as_unseen=args.as_unseen,
            quantiles=(0.05, 0.95),
        )
        context = sampler.context(
            args.model, tp, args.workload, model_config=args.model_config, as_unseen=args.as_unseen
        )
    except (ArtifactError, OSError, ValueError, KeyError) as err:
        print(f"steptime predict: {err}", file=sys.stderr)
        return 2
    out = {
        "median_us": result["median_us"],
        "mean_us": result["mean_us"],
        "p05_us": result["q0.05"],
        "p95_us": result["q0.95"],
        "point_us": result["point_us"],
    }
    if args.json:
        print(json.dumps(out))
        return 0
    seen = "fitted" if context.seen_model else "unseen (hyperprior)"
    workload = context.workload if context.seen_workload else "unseen workload (prior)"
    print(
        f"{sampler.target} time of {context.model} tp{tp} ({seen}, {workload}): "
        f"median {out['median_us']:.1f} µs, mean {out['mean_us']:.1f} µs, "
        f"5–95% [{out['p05_us']:.1f}, {out['p95_us']:.1f}] µs, "
        f"MAPE-optimal point {out['point_us']:.1f} µs"
    )
    return 0


def run_replay(args: argparse.Namespace) -> int:
    import json

    from inference.export import ArtifactError
    from inference.replay import format_replay, replay
    from inference.sampler import StepTimeSampler

    models = []
    for name in args.model:
        if name == "all":
            from data_prep.synth.workloads import MODEL_ORDER

            models.extend(MODEL_ORDER)
        else:
            models.append(name)
    try:
        sampler = StepTimeSampler.load(args.artifact)
        results = [
            replay(
                sampler,
                model,
                _default_tp(model, args.tp),
                args.workload,
                seed=args.seed,
                time_scale=args.time_scale,
                parameter_uncertainty=not args.no_parameter_uncertainty,
                step_noise=not args.no_step_noise,
                real_experiments=args.real_experiments,
                runs=args.runs,
            )
            for model in models
        ]
    except (ArtifactError, OSError, ValueError, KeyError) as err:
        print(f"steptime replay: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return 0
    for result in results:
        print(format_replay(result))
    print(
        "E2E mean, replay / twin truth: " + ", ".join(f"{r.model} {r.ratio():.3f}" for r in results)
    )
    return 0
