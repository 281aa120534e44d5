"""ResRep's `--latency-target`: the per-layer latency table the mask walk charges (rank 0 measures or reads
it, every rank gets the same), what the log says about it, and after the conversion the predicted and the
measured speed-up side by side in the files' `conversion.latency`."""
import torch

from utils.tools.deploy import deploy_form
from utils.tools.latency import interleaved_ms
from utils.tools.latency_table import latency_table
from utils.tools.store import model_from_hdf5
from utils.training.dist import broadcast_object

SPEEDUP_REPEATS = 20  # timed passes (median) of the base and the converted net after conversion


def latency_table_for(run, rcfg):
    """The table at the run's widths, batch and device; None without a latency target."""
    if rcfg.latency_target is None:
        return None
    return broadcast_object(latency_table(run.args.arch, rcfg.latency_batch, run.ctx.device, run.model.deps,
                                          run.num_classes) if run.ctx.is_main else None)


def target_lines(run, hook, groups):
    """Log lines: the base's predicted latency, the narrowest reachable ratio, and a warning when the target is
    below it (a small net on a GPU at a small batch is launch-bound, not MAC-bound)."""
    table, rcfg = hook.latency_table, hook.cfg
    if table is None:
        return []
    fewest = max(rcfg.num_at_least, rcfg.round_to)
    floor = hook.latency_ratio(run.graph.deps_at(run.model.deps, {pg.id: min(pg.group.width, fewest) for pg in groups}))
    lines = [f"latency target {rcfg.latency_target} of the base's latency at batch {rcfg.latency_batch} on "
             f"{run.ctx.device}, predicted {hook.base_ms:.2f} ms for the base by the per-layer table "
             f"{table.path} (the sum of its convs and linears: a ranking model; re-measure with "
             f"`{table.command}`); every pruned group at {fewest} channel(s) would be {floor:.4f} of it"]
    if floor > rcfg.latency_target:
        lines.append(f"warning: latency target {rcfg.latency_target} is out of reach: even the narrowest net the "
                     f"masks can make is predicted at {floor:.4f} of the base's latency, so the masks will squeeze "
                     "every pruned group to its floor; choose a larger target or --latency-batch")
    return lines


def with_latency(run, plan):
    """ResRep's Plan; with a latency target, the predicted latency ratio of the converted widths goes into the
    conversion info, and after the proof the converted net is timed against the base."""
    hook = run.setup.hook
    if hook.latency_table is not None:
        c, ratio = hook.cfg, hook.latency_ratio(hook.masked_deps())
        plan.info["latency"] = {"target": c.latency_target, "batch": c.latency_batch, "device": str(run.ctx.device),
                                "table": hook.latency_table.path, "predicted_base_ms": hook.base_ms,
                                "predicted_ratio": ratio, "predicted_speedup": 1 / ratio}
        plan.lines.append(f"predicted latency {ratio:.4f} of the base's (target {c.latency_target})")
        plan.after = lambda model: measured_speedup(run, model, plan.info["latency"])
    return plan


def measured_speedup(run, converted, predicted):
    """Plan.after: the converted net and the base (--init), BN fused, fp32, at the latency batch on the run's
    device, timed in turns (median); rank 0 only, the rank that writes."""
    if not run.ctx.is_main:
        return {}, []
    arch, n, batch = run.args.arch, run.num_classes, predicted["batch"]
    base = model_from_hdf5(run.init, arch)[0]
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if run.ctx.device.type == "cuda" else []):
        ms = interleaved_ms({"base": deploy_form(base, arch, n), "converted": deploy_form(converted, arch, n)}, batch,
                            run.spec.input_size, run.ctx.device, repeats=SPEEDUP_REPEATS)
    measured = ms["base"] / ms["converted"]
    info = {**predicted, "base_ms": ms["base"], "converted_ms": ms["converted"], "measured_speedup": measured,
            "repeats": SPEEDUP_REPEATS}
    return {"latency": info}, [
        f"latency at batch {batch} on {run.ctx.device} (BN fused, fp32, median of {SPEEDUP_REPEATS}, in turns): base "
        f"{ms['base']:.2f} ms, converted {ms['converted']:.2f} ms; predicted speed-up "
        f"{predicted['predicted_speedup']:.2f}x, measured {measured:.2f}x"]
