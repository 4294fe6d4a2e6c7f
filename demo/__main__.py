"""``python -m demo``: run the embedded default end to end (``demo/__init__.py`` describes it)."""

from __future__ import annotations

import json
from pathlib import Path

from cli import build_parser
from dataset.multi_reason_seg import muse_image_path
from serving.examples import write_model_examples

from . import __doc__ as DEMO_DOC
from .plots import plot_curves, write_overview
from .recipe import DemoSettings, Paths, demo_metrics, demo_stages, example_question, examples, final_model, run_stages


def main(argv: list[str] | None = None) -> None:
    settings = DemoSettings(**vars(build_parser(DemoSettings, DEMO_DOC).parse_args(argv)))
    paths = Paths(Path(settings.out))
    stages = demo_stages(settings, paths)
    seconds = run_stages(stages)
    metrics = demo_metrics(paths.out / "eval" / "metrics.json", seconds, stages)
    (paths.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    train_runs = [paths.run(name) for name in ("train_llm_refer", "train_llm", "train_lora") if paths.run(name).is_dir()]
    plot_curves(paths.out / "pretrain", train_runs, paths.out / "learning_curves.png")
    answered = examples(paths, settings.examples)
    write_overview(paths.world, answered, paths.out / "examples" / "overview.png")
    final = final_model(settings, paths)
    write_model_examples(final, [(muse_image_path(str(paths.world), item), example_question(item, q)) for item, q, _ in answered])
    print(f"\nmetrics: {json.dumps(metrics)}\nwritten: {paths.out / 'metrics.json'}, {paths.out / 'learning_curves.png'}, "
          f"{paths.out / 'examples'}")
    print(f"\nChat with the model:  python chat.py --version {final} --image {final / 'examples' / 'example_0.png'}"
          f"\nServe page and API:   python app.py --version {final}   (http://127.0.0.1:7860, API docs at /docs; "
          "the page's examples come from the model's own world)")


if __name__ == "__main__":
    main()
