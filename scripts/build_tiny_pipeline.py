"""Write a tiny Stable Diffusion or SDXL pipeline with random weights (built from configs) into a folder.

    python scripts/build_tiny_pipeline.py --type stable_diffusion|stable_diffusion_xl OUT_DIR [--seed N]
        [--sample-size PX]

There are no real diffusion weights offline; this pipeline has the real
classes and folder layout (model_index.json, unet, vae, text encoder(s),
tokenizer(s), scheduler), so `model.path: OUT_DIR` trains it like a real one.
An existing, non-empty OUT_DIR is never replaced. Bad input: one line, exit 2.
"""

import sys
from pathlib import Path

from _cli import OneLineArgumentParser, user_errors

from modules.errors import ConfigError
from modules.families.tiny_pipelines import TINY_PIPELINE_TYPES, build_tiny_pipeline

PROGRAM = "build_tiny_pipeline.py"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument("--type", required=True, choices=TINY_PIPELINE_TYPES, help="the pipeline to build")
    parser.add_argument("out_dir", help="the folder to write (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--sample-size", type=int, default=16, help="the UNet's sample_size in latent pixels")
    args = parser.parse_args(argv)
    with user_errors(PROGRAM):
        out_dir = Path(args.out_dir)
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise ConfigError(f"'{out_dir}' already exists and is not empty: choose a new folder")
        build_tiny_pipeline(args.type, out_dir, seed=args.seed, sample_size=args.sample_size)
        print(f"wrote a tiny {args.type} pipeline to '{out_dir}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
