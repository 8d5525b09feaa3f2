"""Open the desktop app.

    python main.py [PRESET]

PRESET (default: training_presets/demo.json when it exists) is loaded into
the app; every field can be edited there and saved back as a preset.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from modules.errors import ConfigError  # noqa: E402

PROGRAM = "main.py"
DEFAULT_PRESET = ROOT / "training_presets" / "demo.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROGRAM, description="Open the desktop app.")
    parser.add_argument("preset", nargs="?", help="preset JSON file to open (default: the demo preset)")
    args = parser.parse_args(argv)
    preset = args.preset or (str(DEFAULT_PRESET) if DEFAULT_PRESET.exists() else None)
    try:
        from ui.app import run_app

        run_app(preset)
    except ConfigError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    except ImportError as error:
        print(f"{PROGRAM}: error: the desktop app needs tkinter and customtkinter ({error})", file=sys.stderr)
        return 2
    except Exception as error:  # tkinter.TclError without a display
        if type(error).__name__ == "TclError":
            print(f"{PROGRAM}: error: cannot open a window: {error}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
