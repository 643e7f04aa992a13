"""The miniature's report: tables (mean +- std over seeds), the verdict, and plots, from the units' results."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from miniature.settings import ARMS, FAMILIES, Settings
from miniature.units import ORIGINAL
from statex_hf.eval.plots import format_length, plot_lines

MODELS = (ORIGINAL, *ARMS)
# A source model whose MQAR accuracy at the fewest pairs stays under this did not learn recall in pretraining
# (at best it recalls the last few pairs): its continuations compare models that do not fill their state,
# where the state size cannot matter.
LEARNED = 0.8


def load_results(out: Path) -> dict[str, dict[str, dict[int, dict[str, Any]]]]:
    """``results[family][model][seed]`` for every finished unit."""
    results: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for path in sorted((out / "units").glob("*-seed*/*/result.json")):
        family, seed = path.parent.parent.name.rsplit("-seed", 1)
        results.setdefault(family, {}).setdefault(path.parent.name, {})[int(seed)] = json.loads(path.read_text())
    return results


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.3f} ± {std:.3f}" if len(values) > 1 else f"{mean:.3f}"


def mqar_at(result: dict[str, Any], length: int) -> list[float | None]:
    """Accuracy by pair count at one eval length."""
    j = result["mqar_lengths"].index(length)
    return [row[j] for row in result["mqar_grid"]]


def _family_section(
    family: str, by_model: dict[str, dict[int, dict[str, Any]]], out: Path
) -> tuple[list[str], list[str]]:
    models = [m for m in MODELS if m in by_model]
    first = next(iter(by_model[models[0]].values()))
    pairs, lengths = first["mqar_pairs"], first["mqar_lengths"]
    seeds = sorted({s for m in models for s in by_model[m]})
    expanded = {m: next(iter(by_model[m].values())).get("statex_layers") for m in models if m != ORIGINAL}
    lines = [f"## {family}: seeds {', '.join(map(str, seeds))}", ""]
    lines += [f"Expanded layers: {', '.join(f'{m} {v}' for m, v in expanded.items() if v)}.", ""]
    if ORIGINAL in by_model:  # pretraining stops early in a run short of time: say how far each seed got
        done = {s: r["training"]["steps"] for s, r in sorted(by_model[ORIGINAL].items())}
        lines += [f"Pretraining steps done: {', '.join(f'seed {s}: {n}' for s, n in done.items())}.", ""]
        lines += _per_seed_table(by_model, models, seeds, pairs, lengths[0])
        lines += _learned_seed_plots(family, by_model, models, seeds, lengths[0], out)
    # Means compare like with like: over the seeds where every model is done (all seeds if none is complete).
    complete = [s for s in seeds if all(s in by_model[m] for m in models)] or seeds
    all_runs = by_model
    by_model = {m: {s: r for s, r in runs.items() if s in complete} for m, runs in by_model.items()}
    by_model = {m: runs for m, runs in by_model.items() if runs}
    models = [m for m in models if m in by_model]
    lines += [f"Means and plots below: seeds {', '.join(map(str, complete))} (every model done).", ""]
    for length in lengths:
        lines += [
            f"MQAR accuracy at {format_length(length)} tokens by number of key-value pairs:",
            "",
            "| model | seeds | " + " | ".join(f"{n} pairs" for n in pairs) + " |",
            "|---|---:" + "|---:" * len(pairs) + "|",
        ]
        curves, errors = {}, {}
        for model in models:
            per_seed = [mqar_at(r, length) for r in by_model[model].values()]
            cells, xs, ys, es = [], [], [], []
            for i, n in enumerate(pairs):
                column = [row[i] for row in per_seed if row[i] is not None]
                cells.append(fmt(column))
                if column and len(column) == len(per_seed):
                    mean, std = mean_std(column)
                    xs.append(n), ys.append(mean), es.append(std)
            lines.append(f"| {model} | {len(per_seed)} | " + " | ".join(cells) + " |")
            curves[model], errors[model] = (xs, ys), es
        lines.append("")
        name = f"{family}_mqar_{format_length(length)}.png"
        plot_lines(
            curves, out / name, f"{family}: MQAR at {format_length(length)} tokens, mean ± std over seeds",
            xlabel="key-value pairs", ylabel="query accuracy", errors=errors,
        )  # fmt: skip
        lines += [f"![{family} MQAR {format_length(length)}]({name})", ""]

    passkey_lengths = first["passkey_lengths"]
    lines += [
        "Passkey exact match by length, training loss at the end:",
        "",
        "| model | " + " | ".join(f"passkey {format_length(n)}" for n in passkey_lengths) + " | final loss |",
        "|---" + "|---:" * (len(passkey_lengths) + 1) + "|",
    ]
    curves, errors = {}, {}
    for model in models:
        runs = list(by_model[model].values())
        columns = [[r["passkey_by_length"][j] for r in runs] for j in range(len(passkey_lengths))]
        losses = [r["training"]["final_loss"] for r in runs]
        lines.append(f"| {model} | " + " | ".join(fmt(c) for c in columns) + f" | {fmt(losses)} |")
        curves[model] = (passkey_lengths, [mean_std(c)[0] for c in columns])
        errors[model] = [mean_std(c)[1] for c in columns]
    name = f"{family}_passkey.png"
    plot_lines(
        curves, out / name, f"{family}: passkey, mean ± std over seeds", xlabel="context length (tokens)",
        ylabel="exact match", errors=errors, log_x=True, tick_format=format_length,
    )  # fmt: skip
    lines += ["", f"![{family} passkey]({name})", ""]
    lines += _loss_plot(family, by_model, models, out)

    verdicts = []
    by_model = all_runs  # every seed where both the arm and LPT are done
    for model in [m for m in MODELS if m in all_runs and m.startswith("StateX")]:
        common = sorted(set(by_model[model]) & set(by_model.get("LPT", {})))
        if not common:
            continue
        for length in lengths:
            diffs = []
            for s in common:
                mine, theirs = mqar_at(by_model[model][s], length), mqar_at(by_model["LPT"][s], length)
                cells = [(a, b) for a, b in zip(mine, theirs) if a is not None and b is not None]
                diffs.append(statistics.mean(a - b for a, b in cells))
            wins = sum(d > 0 for d in diffs)
            learned = [s for s in common if _learned(by_model, s, length)]
            verdicts.append(
                f"- {family} {model} − LPT, MQAR at {format_length(length)} (mean over pair counts): {fmt(diffs)} "
                f"(ahead in {wins} of {len(diffs)} seeds; per seed "
                + ", ".join(f"{s}: {d:+.3f}" for s, d in zip(common, diffs))
                + f"; sources that learned recall: {', '.join(map(str, learned)) or 'none'})"
            )
    return lines, verdicts


def _per_seed_table(
    by_model: dict[str, dict[int, dict[str, Any]]], models: list[str], seeds: list[int], pairs: list[int], length: int
) -> list[str]:
    """Each seed's MQAR accuracy (mean over pair counts) per model: seeds differ more than arms do."""
    lines = [
        f"Per seed, MQAR at {format_length(length)} tokens (mean over pair counts; in brackets: at {pairs[0]} pairs, "
        f"then {pairs[-1]} pairs). A source under {LEARNED} at {pairs[0]} pairs did not learn recall in pretraining.",
        "",
        "| seed | learned recall | " + " | ".join(models) + " |",
        "|---:|---" + "|---:" * len(models) + "|",
    ]
    for seed in seeds:
        cells = []
        for model in models:
            result = by_model[model].get(seed)
            if result is None:
                cells.append("not run")
                continue
            row = [a for a in mqar_at(result, length) if a is not None]
            cells.append(f"{statistics.mean(row):.3f} ({row[0]:.2f}, {row[-1]:.2f})")
        learned = "yes" if _learned(by_model, seed, length) else "no"
        lines.append(f"| {seed} | {learned} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _learned_seed_plots(
    family: str,
    by_model: dict[str, dict[int, dict[str, Any]]],
    models: list[str],
    seeds: list[int],
    length: int,
    out: Path,
) -> list[str]:
    """Accuracy against pairs for each seed whose source learned recall: the runs where the state can matter."""
    lines = []
    for seed in [s for s in seeds if _learned(by_model, s, length)]:
        curves = {}
        for model in models:
            if (result := by_model[model].get(seed)) is not None:
                points = [(n, a) for n, a in zip(result["mqar_pairs"], mqar_at(result, length)) if a is not None]
                curves[model] = ([n for n, _ in points], [a for _, a in points])
        name = f"{family}_seed{seed}_mqar_{format_length(length)}.png"
        plot_lines(
            curves, out / name, f"{family} seed {seed} (source learned recall): MQAR at {format_length(length)} tokens",
            xlabel="key-value pairs", ylabel="query accuracy",
        )  # fmt: skip
        lines.append(f"![{family} seed {seed} MQAR]({name})")
    return [" ".join(lines), ""] if lines else []


def _learned(by_model: dict[str, dict[int, dict[str, Any]]], seed: int, length: int) -> bool:
    source = by_model.get(ORIGINAL, {}).get(seed)
    return source is not None and (mqar_at(source, length)[0] or 0.0) >= LEARNED


def _loss_plot(family: str, by_model: dict[str, dict[int, dict[str, Any]]], models: list[str], out: Path) -> list[str]:
    """Training loss against step (mean over seeds): the pretraining, and every continuation on one axis."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for model in models:
        runs = [r["training"]["loss_curve"] for r in by_model[model].values()]
        steps = [step for step, _ in min(runs, key=len)]
        curves[model] = (steps, [statistics.mean(run[i][1] for run in runs) for i in range(len(steps))])
    lines = []
    for name, chosen in (("pretraining", [ORIGINAL]), ("continuation", [m for m in models if m != ORIGINAL])):
        picked = {m: curves[m] for m in chosen if m in curves}
        if not picked:
            continue
        file = f"{family}_loss_{name}.png"
        plot_lines(
            picked, out / file, f"{family}: {name} loss, mean over seeds", xlabel="step",
            ylabel="loss on the labelled tokens", log_x=False, ylim=None, markers=False,
        )  # fmt: skip
        lines.append(f"![{family} {name} loss]({file})")
    return [" ".join(lines), ""]


def write_report(out: Path) -> str:
    """Write ``results.md`` and ``results.json`` (and the plots) for what is done in ``out``; returns the markdown."""
    settings = Settings.from_json(out / "settings.json")
    results = load_results(out)
    s = settings
    lines = [
        "# StateX vs LPT in miniature",
        "",
        f"Models: width {s.hidden_size}, {s.num_layers} layers; GLA {s.gla_heads} heads (short convolution), "
        f"Mamba2 state size {s.mamba2_state_size}, head dim {s.mamba2_head_dim}. "
        f"Pretraining: {s.curriculum_steps} steps x {s.pretrain_batch} x {s.curriculum_length} tokens (MQAR with "
        f"{s.curriculum_pairs} pairs), then {s.pretrain_steps} steps x {s.pretrain_batch} x {s.pretrain_length} "
        f"tokens, lr {s.pretrain_lr:g}; "
        f"continuation (every arm alike): {s.continue_steps} steps x {s.continue_batch} x {s.continue_length} tokens, "
        f"lr {s.continue_lr:g}. Training mix {s.mix}, MQAR with {s.pairs} pairs. StateX arms expand layers "
        f"range(0, {s.num_layers}, {s.every}) (GLA: heads merged, Mamba2: state size x4). "
        "Values: mean ± std over seeds.",
        "",
    ]
    devices = sorted({r["training"]["device"] for by_model in results.values() for runs in by_model.values()
                      for r in runs.values() if "device" in r.get("training", {})})  # fmt: skip
    if devices:
        lines[-1:-1] = [f"Trained on: {', '.join(devices)}."]
    verdicts: list[str] = []
    for family in [f for f in FAMILIES if f in results]:
        section, verdict = _family_section(family, results[family], out)
        lines += section
        verdicts += verdict
    lines += ["## Verdict", "", *verdicts, ""]
    text = "\n".join(lines)
    (out / "results.md").write_text(text)
    summary = {
        f: {m: {str(seed): {k: v for k, v in r.items() if k != "training"} | {"final_loss": r["training"]["final_loss"]}
                for seed, r in runs.items()} for m, runs in by_model.items()}
        for f, by_model in results.items()
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps({"settings": json.loads(s.to_json()), "results": summary}, indent=1))
    return text
