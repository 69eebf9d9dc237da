"""The inpainting mask drawn over the init image, free of Qt: brush and eraser strokes, clear, invert, undo,
and the outpainting margins ("Extend canvas"). White repaints, black keeps (sdkit.inpaint's convention)."""

from __future__ import annotations

from PIL import Image, ImageChops, ImageDraw

from sdkit import images, inpaint

MAX_UNDO = 50
EXTEND_STEP = 64  # pixels one "Extend canvas" click adds on a side (a multiple of 8)


class Mask:
    def __init__(self, size: tuple[int, int]):
        self.image = Image.new("L", size, 0)  # (width, height) of the init image
        self.history: list[Image.Image] = []
        self.extend = [0, 0, 0, 0]  # outpainting margins: left, top, right, bottom

    @property
    def is_empty(self) -> bool:
        return self.image.getbbox() is None

    def stroke(self, points: list[tuple[float, float]], size: int, erase: bool = False) -> None:
        """A brush (white) or eraser (black) stroke `size` pixels wide through `points` (image coordinates)."""
        self._push()
        draw, fill, r = ImageDraw.Draw(self.image), 0 if erase else 255, size / 2
        if len(points) > 1:
            draw.line(points, fill=fill, width=max(1, round(size)))
        for x, y in points:  # round ends and joints
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)

    def clear(self) -> None:
        self._push()
        self.image = Image.new("L", self.image.size, 0)

    def invert(self) -> None:
        self._push()
        self.image = ImageChops.invert(self.image)

    def undo(self) -> bool:
        """Back to the mask before the last change; False when there is nothing to undo."""
        if not self.history:
            return False
        self.image = self.history.pop()
        return True

    def grow(self, side: int, pixels: int = EXTEND_STEP) -> None:
        """Extend canvas: `pixels` more on side 0..3 (left, top, right, bottom)."""
        self.extend[side] += pixels

    def generate_kwargs(self, init_image, mask_blur: int, inpaint_area: str, inpaint_padding: int, seed: int) -> dict:
        """generate()'s inpainting arguments for `init_image` (of this mask's size): with margins, an outpainting
        canvas and its mask in place of the init image, at the canvas size (sdkit.inpaint.outpaint_canvas); else
        the drawn mask; {} when nothing is drawn (image to image). seed: the run's, which the pre-fill noise takes."""
        if any(self.extend):
            canvas, mask = inpaint.outpaint_canvas(images.open_image(init_image), *self.extend, mask_blur, seed)
            height, width = images.default_size(canvas)
            return dict(init_image=canvas, mask_image=mask, mask_blur=mask_blur, width=width, height=height)
        if self.is_empty:
            return {}
        return dict(mask_image=self.image.copy(), mask_blur=mask_blur, inpaint_area=inpaint_area,
                    inpaint_padding=inpaint_padding)

    def _push(self) -> None:
        self.history = (self.history + [self.image.copy()])[-MAX_UNDO:]
