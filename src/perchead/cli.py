"""``perchead`` command line: ``perchead <command> [options]``.

Each command is a typed function in the module that owns it; tyro turns its signature into options. The
module is imported only when its command runs, so ``perchead --help`` answers without loading torch.
"""

from __future__ import annotations

import importlib
import os
import sys

# name -> ("module:function", one-line summary). Only commands that work are listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "render": ("perchead.io.commands:render", "render a 3DGS .ply to a turntable video and a grid of views"),
    "synth": ("perchead.data.commands:synth", "generate procedural multi-view synthetic heads (a dataset)"),
    "convert-data": ("perchead.data.commands:convert", "convert NeRSemble/Cafca/FFHQ/Ava-256 into perchead's format"),
    "preprocess": ("perchead.preprocess.commands:preprocess", "photos -> matted 512x512 head crop + camera"),
    "model-info": ("perchead.model.commands:model_info", "parameter counts and Gaussians of a preset"),
    "train": ("perchead.train.commands:train", "train a stage (reconstruct / sharpen / edit); torchrun for DDP"),
    "reconstruct": ("perchead.inference.commands:reconstruct", "photos/videos -> 3D head .ply + renders"),
    "edit": ("perchead.edit.commands:edit", "segmentation map + text/image style -> edited 3D head .ply + renders"),
    "eval-heldout": ("perchead.eval.heldout:eval_heldout", "held-out novel/extreme-view PSNR vs a template"),
    "eval": ("perchead.eval.report:eval_command", "checkpoints + baselines on held-out views: CSV, tables, figures"),
    "app": ("perchead.app.commands:app", "local web page: photo -> 3D viewer + downloads; paint a map -> edited head"),
    "eval-edit": ("perchead.edit.evaluate:eval_edit", "editing network: held-out PSNR vs a template + disentanglement"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: perchead [--verbose] <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`perchead <command> --help` lists a command's options. --verbose keeps MediaPipe/TFLite's native",
              "log lines, which are silenced otherwise."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv:  # global: accepted before or after the command, never passed on to it
        argv = [a for a in argv if a != "--verbose"]
        os.environ["PERCHEAD_VERBOSE"] = "1"  # perchead.preprocess.quiet.VERBOSE_ENV, read without importing it
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"perchead {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"perchead: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    import tyro

    module_name, func_name = COMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        result = tyro.cli(func, args=rest, prog=f"perchead {name}")
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        # User-facing failures (bad file, bad option value, missing weights) end in one clear line.
        print(f"perchead {name}: error: {exc}", file=sys.stderr)
        return 1
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
