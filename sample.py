r"""Samples from a compressor's implied distribution: text, image rows or audio.

    python sample.py --compressor=gzip --prompt_file=PROMPT --num_bytes=200 --seed=0 --output=OUT
    python sample.py --compressor=lzma --mode=image --prompt_file=photo.jpg --output=out.png
    python sample.py --compressor=zstd --mode=audio --prompt_file=in.wav --num_bytes=4000 \
        --output=out.wav
    python sample.py --compressor=lm --model=RUN_DIR --prompt_file=PROMPT --num_bytes=200 \
        --output=OUT

Modes: `text` writes the sampled bytes (without the prompt) and prints them with each byte
outside printable ASCII escaped (`\x00`, `\t`, `\\`; newlines kept), as docs/gallery.md shows
them; `image` loads the prompt as 8-bit grayscale resized to --image_width x --image_height, keeps
the first half of each row and samples the rest, and writes a PNG of the original beside the
completed image, enlarged x4 and labelled (original | prompt, sample); `audio` reads a WAV (first
channel, reduced to unsigned 8 bit), samples --num_bytes samples after it and writes an 8-bit mono
WAV of the prompt followed by the continuation. The library is `compressors/generative.py`.

An existing --output is replaced only with --force, and never when it is the prompt file; a FIFO
or a device such as /dev/null is written into. The output appears only once complete.
"""

import io
import os
import wave

from absl import flags

MODES = ("text", "image", "audio")


def _define_flags() -> None:
    """Defines the flags (only when run as a script: tests import this module beside others)."""
    flags.DEFINE_string("compressor", "gzip", "gzip, lzma, zstd, bzip2, brotli or lm.")
    flags.DEFINE_string("model", "", "The model of --compressor=lm: RUN_DIR, a byte-level run.")
    import cli

    cli.retired_flag("workdir", "--model=RUN_DIR")
    flags.DEFINE_string("prompt_file", None, "Prompt: bytes, an image or a WAV.")
    flags.DEFINE_integer("num_bytes", 200, "Bytes (audio: samples) to sample.")
    flags.DEFINE_integer("seed", 0, "Random seed; equal seeds give equal output.")
    flags.DEFINE_string("output", None, "Where to write the sample.")
    flags.DEFINE_bool("force", False, "Replace --output if it is an existing file.")
    flags.DEFINE_enum("mode", "text", MODES, "What the prompt is.")
    flags.DEFINE_float("temperature", 1.0, "T > 0: probabilities ^ (1/T).")
    flags.DEFINE_integer("lookahead", 1, "K >= 1 (classical only); 1 = paper's rule.")
    flags.DEFINE_integer("num_continuations", 4, "Continuations when K > 1.")
    flags.DEFINE_integer("context_bytes", 2048, "Context: the last this many bytes.")
    flags.DEFINE_integer("workers", 2, "Processes scoring candidates (classical).")
    flags.DEFINE_integer("image_width", 64, "Image mode: resize to this width.")
    flags.DEFINE_integer("image_height", 32, "Image mode: resize to this height.")


def make_sampler(
    compressor: str,
    model: str = "",
    seed: int = 0,
    temperature: float = 1.0,
    lookahead: int = 1,
    num_continuations: int = 4,
    context_bytes: int = 2048,
    workers: int = 2,
):
    """Returns (sample_fn(context, num_bytes) -> bytes, close_fn), one seeded stream of draws.

    Raises:
      ValueError: unknown compressor, lm without a model, lookahead > 1 with lm, bad values.
    """
    from compressors import generative

    generative.check_sampling_args(0, temperature, lookahead, context_bytes)
    if compressor == "lm":
        if not model:
            raise ValueError("--compressor=lm needs --model=RUN_DIR (a train.py run).")
        if lookahead != 1:
            raise ValueError("--lookahead applies to classical compressors only.")
        lm = generative.LanguageModelSampler(model, context_bytes)
        calls = iter(range(1 << 62))  # a fresh seed per call, derived from --seed

        def sample_lm(context: bytes, num_bytes: int) -> bytes:
            return lm.sample(context, num_bytes, seed * 1_000_003 + next(calls), temperature)

        return sample_lm, lambda: None
    import numpy as np

    scorer = generative.CandidateScorer(generative.ClassicalCompress(compressor), workers)
    rng = np.random.default_rng(seed)

    def sample_classical(context: bytes, num_bytes: int) -> bytes:
        args = (temperature, lookahead, num_continuations, context_bytes)
        return bytes(generative.iter_bytes(scorer, context, num_bytes, rng, *args))

    return sample_classical, lambda: scorer.__exit__()


def read_prompt(path: str) -> bytes:
    """Returns the file's bytes. Raises FileNotFoundError or IsADirectoryError naming the path."""
    import pathlib

    if path and pathlib.Path(path).is_dir():
        raise IsADirectoryError(f"Prompt file {path!r} is a directory (--prompt_file).")
    if not path or not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"Prompt file {path!r} not found (--prompt_file).")
    return pathlib.Path(path).read_bytes()


def load_image(path: str, width: int, height: int):
    """Returns the image as [height, width] uint8 grayscale."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    read_prompt(path)  # the clear error for a missing file
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L").resize((width, height), Image.BILINEAR), np.uint8)
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image PIL can read (image mode).") from None


LABEL_BAND_PIXELS = 26  # the white band above the images holding their labels


def save_side_by_side(
    original,
    sampled,
    path,
    scale: int = 4,
    known_columns: int | None = None,
    sampler: str = "",
    image_format: str | None = None,
) -> None:
    """Writes a labelled PNG: original | gap | prompt and sample, enlarged `scale` times.

    A white band above says what each part is: the original, and in the completed image its
    first `known_columns` pixels of each row (the prompt) and the rest (`sampler`'s sample),
    each half under its own bracket.

    Args:
      path: a file name or a binary file (then give `image_format`).
      image_format: PIL's format name ('PNG'); default from the file name's extension.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    height, width = original.shape
    known = width // 2 if known_columns is None else known_columns
    gap = np.full((height, 2), 255, np.uint8)
    joined = np.concatenate([original, gap, sampled], axis=1)
    pixels = Image.fromarray(joined, "L").resize(
        (joined.shape[1] * scale, height * scale), Image.NEAREST
    )
    band = LABEL_BAND_PIXELS
    image = Image.new("L", (pixels.width, pixels.height + band), 255)
    image.paste(pixels, (0, band))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    right = (width + 2) * scale  # x where the completed image starts
    parts = [
        ("original", 0, width * scale),
        ("prompt", right, right + known * scale),
        (f"{sampler} sample".strip(), right + known * scale, right + width * scale),
    ]
    for text, x0, x1 in parts:
        if x1 - x0 < 4:
            continue
        draw.text(((x0 + x1) / 2, 2), text, fill=0, font=font, anchor="ma")
        draw.line(
            [(x0 + 2, band - 6), (x0 + 2, band - 3), (x1 - 3, band - 3), (x1 - 3, band - 6)], fill=0
        )
    image.save(path, format=image_format)


def image_format(path: str) -> str:
    """PIL's format for an output's extension; PNG for none or one PIL does not write."""
    from PIL import Image

    found = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
    return found if found in Image.SAVE else "PNG"


def read_wav_u8(path: str) -> tuple[bytes, int]:
    """Returns (unsigned 8-bit samples of the first channel, frame rate) of a PCM WAV."""
    import numpy as np

    read_prompt(path)
    try:
        with wave.open(path, "rb") as f:
            width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
            frames = f.readframes(f.getnframes())
    except (wave.Error, EOFError) as e:
        raise ValueError(
            f"{path} is not a PCM WAV file ({e}): audio mode reads WAV; convert it first, "
            f"e.g. ffmpeg -i {path} out.wav"
        ) from None
    if width == 1:
        samples = np.frombuffer(frames, np.uint8)
    elif width in (2, 4):
        signed = np.frombuffer(frames, f"<i{width}")
        samples = ((signed >> (8 * width - 8)) + 128).astype(np.uint8)  # keep the top byte
    else:
        raise ValueError(f"{path}: {8 * width}-bit WAV not supported (8, 16 or 32 bit PCM).")
    return samples[::channels].tobytes(), rate


def write_wav_u8(path, samples: bytes, rate: int) -> None:
    """Writes unsigned 8-bit mono PCM to `path` (a file name or a binary file)."""
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(1)
        f.setframerate(rate)
        f.writeframes(samples)


def run(
    compressor: str,
    prompt_file: str,
    output: str,
    num_bytes: int = 200,
    mode: str = "text",
    image_width: int = 64,
    image_height: int = 32,
    force: bool = False,
    **sampler_kwargs,
) -> bytes:
    """Samples one output file; returns the sampled bytes (image: the sampled pixels).

    The output is checked before any work (paths.check_output: an existing file is replaced only
    with `force`, never the prompt file) and appears only complete; a FIFO or character device
    is written into.

    Raises:
      ValueError / OSError: bad arguments, a missing prompt file, or an output not to write.
    """
    import paths
    from compressors import generative

    if compressor != "lm" and compressor not in generative.GENERATIVE_COMPRESSORS:
        raise ValueError(
            f"Unknown compressor {compressor!r}: choose from "
            f"{list(generative.GENERATIVE_COMPRESSORS)} or lm (with --model)."
        )
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if num_bytes < 0:
        raise ValueError(f"num_bytes must be >= 0, got {num_bytes}.")
    if not output:
        raise ValueError("--output is required.")
    paths.check_output(output, prompt_file or "-", force)
    if mode == "image":
        original = load_image(prompt_file, image_width, image_height)
    elif mode == "audio":
        prompt, rate = read_wav_u8(prompt_file)
    else:
        prompt = read_prompt(prompt_file)
    sample_fn, close = make_sampler(compressor, **sampler_kwargs)
    encoded = io.BytesIO()  # the output file's bytes, written once complete
    try:
        if mode == "image":
            known = image_width // 2
            sampled = generative.complete_rows(sample_fn, original, known)
            save_side_by_side(
                original, sampled, encoded, known_columns=known, sampler=compressor,
                image_format=image_format(output),
            )  # fmt: skip
            generated = sampled[:, known:].tobytes()
        else:
            generated = sample_fn(prompt, num_bytes)
    finally:
        close()
    if mode == "audio":
        write_wav_u8(encoded, prompt + generated, rate)
    elif mode == "text":
        encoded.write(generated)
    _write_output(output, encoded.getvalue(), force)
    return generated


def _write_output(path: str, data: bytes, force: bool) -> None:
    """Writes `data` into a FIFO or device as it is, and to a file so that it appears only
    complete."""
    import paths
    from coding import container

    paths.check_output(path, force=force)  # again: it may have appeared while sampling
    if paths.writes_in_place(path):
        with open(path, "wb") as f:
            f.write(data)
    else:
        with container.atomic_output(path) as f:
            f.write(data)


def main(argv):
    FLAGS = flags.FLAGS
    import cli

    cli.no_arguments(argv)

    cli.quiet_logging()
    options = ("num_bytes", "mode", "image_width", "image_height", "model", "seed")
    options += ("temperature", "lookahead", "num_continuations", "context_bytes", "workers")
    generated = run(
        FLAGS.compressor,
        FLAGS.prompt_file,
        FLAGS.output,
        force=FLAGS.force,
        **{name: FLAGS[name].value for name in options},
    )
    print(f"Sampled {len(generated)} bytes with {FLAGS.compressor}; wrote {FLAGS.output}.")
    if FLAGS.mode == "text":
        from compressors import generative

        print(generative.printable(generated))


if __name__ == "__main__":
    import cli

    cli.run(main, define_flags=_define_flags)
