"""``python -m demo``: run the embedded default end to end (``demo/__init__.py`` describes it)."""

from __future__ import annotations

import json
from pathlib import Path

from training.cli import build_parser

from . import __doc__ as DEMO_DOC
from .plots import plot_curves, write_overview
from .recipe import DemoSettings, Paths, demo_metrics, demo_stages, examples, run_stages


def main(argv: list[str] | None = None) -> None:
    settings = DemoSettings(**vars(build_parser(DemoSettings, DEMO_DOC).parse_args(argv)))
    paths = Paths(Path(settings.out))
    stages = demo_stages(settings, paths)
    seconds = run_stages(stages)
    metrics = demo_metrics(paths.out / "eval" / "metrics.json", seconds, stages)
    (paths.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    train_runs = [paths.run(name) for name in ("train_llm_refer", "train_llm", "train_lora") if paths.run(name).is_dir()]
    plot_curves(paths.out / "pretrain", train_runs, paths.out / "learning_curves.png")
    write_overview(paths.world, examples(paths, settings.examples), paths.out / "examples" / "overview.png")
    print(f"\nmetrics: {json.dumps(metrics)}\nwritten: {paths.out / 'metrics.json'}, {paths.out / 'learning_curves.png'}, "
          f"{paths.out / 'examples'}")


if __name__ == "__main__":
    main()
