"""`sdkit-desktop`: start the app, or drive the real window from the command line for demos and checks.

    sdkit-desktop
    sdkit-desktop --model PATH --prompt TEXT --steps 20 --seed 1 --generate --screenshot app.png --quit
    sdkit-desktop --model SDXL --refiner REFINER --refiner-start 0.8 --prompt TEXT --generate
"""

from __future__ import annotations

import argparse
import sys

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from .main_window import MainWindow
from .session import BACKENDS, DTYPES, ModelChoice


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sdkit-desktop", description="Make images with Stable Diffusion in a window.")
    p.add_argument("--model", help="a .safetensors file, a diffusers folder or a Hub repo id")
    p.add_argument("--prompt")
    p.add_argument("--negative-prompt")
    p.add_argument("--steps", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--device")
    p.add_argument("--dtype", choices=DTYPES)
    p.add_argument("--refiner", help="with an SDXL --model: an SDXL refiner's .safetensors file, folder or Hub id")
    p.add_argument("--refiner-start", type=float, metavar="FRACTION", help="the Refiner switch at: the share of "
                   "the schedule the model denoises before the refiner takes over, 0.01 to 0.99 (default 0.8)")
    p.add_argument("--generate", action="store_true", help="start generating at once")
    p.add_argument("--screenshot", metavar="FILE", help="with --generate: save a picture of the window once the "
                   "result is shown (or the error is)")
    p.add_argument("--quit", action="store_true", help="with --generate: exit when done, non-zero on failure")
    args = p.parse_args(argv)
    if (args.screenshot or args.quit) and not args.generate:
        p.error("--screenshot and --quit act when a generation ends: add --generate")
    for flag, given in (("--generate", args.generate), ("--refiner", args.refiner)):
        if given and not args.model:
            p.error(f"{flag} needs --model")
    if args.refiner_start is not None and not args.refiner:
        p.error("--refiner-start is where the refiner takes over: add --refiner")
    if args.refiner_start is not None and not 0.01 <= args.refiner_start <= 0.99:
        p.error(f"--refiner-start must be in [0.01, 0.99] (the Refiner switch at), got {args.refiner_start}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scripted = args.generate
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("sdkit-desktop")
    window = MainWindow(persist=not scripted)  # scripted: default geometry and settings, nothing saved
    apply_args(window, args)
    window.show()
    if not scripted:
        return app.exec()

    outcome = {"code": 0}

    def done(message: str) -> None:
        if message:
            print(f"sdkit-desktop: {message}", file=sys.stderr)
            outcome["code"] = 1
        QTimer.singleShot(200, finish)  # let the result's layout and repaint happen before the grab

    def finish() -> None:
        if args.screenshot:
            window.grab().save(args.screenshot)
        if args.quit:
            window.close()
            app.quit()

    window.ended.connect(done)
    QTimer.singleShot(0, window.generate)
    code = app.exec()
    return outcome["code"] or code


def apply_args(window: MainWindow, args: argparse.Namespace) -> None:
    """Put the command-line values into the form, as a person would type them."""
    if args.model:
        window.picker.set_choice(ModelChoice(args.model, args.backend, args.device, args.dtype,
                                             refiner=args.refiner))
    if args.prompt is not None:
        window.prompt.set_text(args.prompt)
    if args.negative_prompt is not None:
        window.negative.set_text(args.negative_prompt)
    form = window.form
    for value, box in ((args.steps, form.steps), (args.width, form.width_box), (args.height, form.height_box)):
        if value is not None:
            box.setValue(value)
    if args.refiner_start is not None:
        form.refiner_start.setValue(args.refiner_start)
    if args.seed is not None:
        form.seed.setText(str(args.seed))
        form.seed_lock.setChecked(True)


if __name__ == "__main__":
    sys.exit(main())
