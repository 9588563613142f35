"""Batched study runs against a plain per-run loop: the Safran & Shamir k = n = 10 cell.

    python benchmarks/studies.py [--k 10] [--runs 300] [--repeats 2] [--threads N] [--skip-xor]

The same ``--runs`` gradient-descent runs (same initial students, seed 0) of the ``safran-shamir`` protocol
(closed-form population loss, step 5/k, stop at ‖∇F‖ ≤ 1e-9 or F ≤ 1e-3, at most 200 000 steps) are run by
``lossatlas.studies.teacher_student.gradient_descent`` (every unfinished run advanced by one set of batched
tensor operations, finished runs dropped from the batch at the step they finish) and by
``gradient_descent_loop`` (one run after another, a Python loop of steps each), alternately, best of
``--repeats``, in wall-clock and in CPU seconds of this process (``time.process_time``: on a machine shared
with other jobs, the time the runner itself computed; with one torch thread the two agree on an idle
machine). Every output (final students, objectives, gradient norms, largest rises, step counts, stop
reasons) must be the same bits. A second table does the same for the batched trainer of
``xor-jellyfish`` (stacked parameters, Adam) against ``torch.optim.Adam`` per run. Prints markdown tables and
writes ``results/studies.json`` (issue 11 target: ≥ 20× on the k = n = 10 cell).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import machine_info, machine_line, markdown_table, set_threads, timed, write_results

from lossatlas.data import load_data
from lossatlas.studies.batched import batched_descent, descent_loop, stacked_mlp, zoo_runs
from lossatlas.studies.teacher_student import gradient_descent, gradient_descent_loop, initial_students, teacher


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall-clock seconds, CPU seconds of this process, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """The same float64 bits everywhere, NaN where the other has NaN."""
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b)) and np.array_equal(a[~nan].view(np.int64), b[~nan].view(np.int64)))


def safran_shamir(k: int, runs: int, repeats: int) -> dict:
    v = teacher(k)
    w0 = initial_students(runs, k, k, k, seed=0)
    kwargs: dict[str, Any] = {"grad_tol": 1e-9, "max_steps": 200_000, "stop_below": 1e-3}
    times: dict[str, list[float]] = {"batched_s": [], "loop_s": [], "batched_cpu_s": [], "loop_cpu_s": []}
    for _ in range(repeats):  # alternate, so both see the same machine load
        tb, cb, batched = timed_cpu(lambda: gradient_descent(w0, v, 5 / k, **kwargs))
        tl, cl, looped = timed_cpu(lambda: gradient_descent_loop(w0, v, 5 / k, **kwargs))
        for key, value in (("batched_s", tb), ("loop_s", tl), ("batched_cpu_s", cb), ("loop_cpu_s", cl)):
            times[key].append(value)
    diff = max(float((batched.w - looped.w).abs().max()), float(np.abs(batched.objective - looped.objective).max()))
    assert all(same_bits(getattr(batched, f), getattr(looped, f)) for f in ("objective", "grad_norm", "max_increase"))
    assert same_bits(batched.w.numpy(), looped.w.numpy()), f"batched and per-run results differ by {diff}"
    assert (batched.steps == looped.steps).all() and (batched.stop == looped.stop).all()
    best = {key: min(values) for key, values in times.items()}
    return {"k": k, "runs": runs, **best, "all_times": times, "speedup": best["loop_s"] / best["batched_s"],
            "speedup_cpu": best["loop_cpu_s"] / best["batched_cpu_s"], "max_abs_difference": diff,
            "spurious_pct": float(100 * (batched.objective > 1e-3).mean()),
            "total_steps": int(batched.steps.sum()), "longest_run_steps": int(batched.steps.max())}


def xor_adam(h: int, runs: int, steps: int, repeats: int) -> dict:
    data = load_data("xor")
    x, y = data.x_train.double(), data.y_train
    _, theta = zoo_runs(f"zoo:mlp:widths={h},activation=relu", range(runs), input_shape=(2,), output_dim=2)

    def stacked(th: dict) -> torch.Tensor:
        out = stacked_mlp(th, x, torch.relu)
        return F.cross_entropy(out.transpose(1, 2), y.expand(out.shape[0], -1), reduction="none").mean(1)

    def single(th: dict) -> torch.Tensor:
        out = stacked_mlp({k: v[None] for k, v in th.items()}, x, torch.relu)[0]
        return F.cross_entropy(out, y)

    tb_all, tl_all = [], []
    for _ in range(repeats):
        tb, batched = timed(lambda: batched_descent(stacked, theta, optimizer="adam", lr=1e-3, steps=steps,
                                                    stacked=True))
        tl, looped = timed(lambda: descent_loop(single, theta, optimizer="adam", lr=1e-3, steps=steps))
        tb_all.append(tb)
        tl_all.append(tl)
    diff = max(float((batched.theta[k] - looped[k]).abs().max()) for k in theta)
    assert diff <= 1e-10, f"batched and per-run training differ by {diff}"
    return {"h": h, "runs": runs, "steps": steps, "batched_s": min(tb_all), "loop_s": min(tl_all),
            "speedup": min(tl_all) / min(tb_all), "max_abs_difference": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--xor-runs", type=int, default=100)
    parser.add_argument("--xor-steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both runners (default: every usable core; the loop cannot use them)")
    parser.add_argument("--skip-xor", action="store_true", help="only the Safran & Shamir cell")
    args = parser.parse_args()
    info = machine_info(set_threads(args.threads))
    ss = safran_shamir(args.k, args.runs, args.repeats)
    print(f"### Safran & Shamir cell k = n = {ss['k']}, {ss['runs']} runs (best of {args.repeats})\n")
    print(markdown_table(
        ["runner", "wall (s)", "speed-up", "CPU (s)", "speed-up (CPU)", "max |difference|",
         "GD steps (all runs / longest)", "% spurious"],
        [["per-run Python loop", f"{ss['loop_s']:.2f}", "1.0×", f"{ss['loop_cpu_s']:.2f}", "1.0×", "—",
          f"{ss['total_steps']} / {ss['longest_run_steps']}", f"{ss['spurious_pct']:.1f}"],
         ["batched (`gradient_descent`)", f"{ss['batched_s']:.2f}", f"**{ss['speedup']:.1f}×**",
          f"{ss['batched_cpu_s']:.2f}", f"**{ss['speedup_cpu']:.1f}×**", "0 (same bits)", "same", "same"]]))
    if args.skip_xor:
        print("\n" + machine_line(info))
        write_results("studies", {"machine": info, "safran_shamir": ss})
        return
    xor = xor_adam(4, args.xor_runs, args.xor_steps, args.repeats)
    print(f"\n### XOR, ReLU h = {xor['h']}, Adam, {xor['runs']} runs × {xor['steps']} steps "
          f"(best of {args.repeats})\n")
    print(markdown_table(["runner", "time (s)", "speed-up", "max |difference|"],
                         [["`torch.optim.Adam` per run", f"{xor['loop_s']:.2f}", "1.0×", "—"],
                          ["stacked (`batched_descent`)", f"{xor['batched_s']:.2f}", f"**{xor['speedup']:.1f}×**",
                           f"{xor['max_abs_difference']:.1e}"]]))
    print("\n" + machine_line(info))
    write_results("studies", {"machine": info, "safran_shamir": ss, "xor_adam": xor})


if __name__ == "__main__":
    main()
