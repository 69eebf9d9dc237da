"""sdkit.batch / sdkit-batch: rows, manifest, resume after Ctrl-C, a killed Ray worker, bad rows (tiny SD1 model).

Every unit must end up in manifest.jsonl exactly once, with a file whose sha256 is recorded and whose pixels
equal generating that row alone.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sdkit
from sdkit.batch import RowsError, rows
from sdkit.batch.cli import main as batch_cli
from sdkit.batch.dispenser import Dispenser
from sdkit.batch.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]
ARGS = dict(width=32, height=32, steps=2, sampler="euler_a")  # euler_a: its per-step noise is seeded too
# one torch thread, as in the workers (Ray's 1-CPU actors, the CLI run with OMP_NUM_THREADS=1): the same BLAS
# blocking, so the same pixels
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe(sd1_folder):
    return sdkit.load(sd1_folder, backend="torch", device="cpu", dtype="float32")


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def check_exactly_once(out: Path, expected: int, pipe=None) -> list[dict]:
    """One line per unit; each done one's file on disk with the recorded hash and (with `pipe`) the pixels of
    the same arguments generated alone; no other image."""
    entries = manifest(out)
    keys = [(e["row"], e["copy"]) for e in entries]
    assert len(keys) == len(set(keys)) == expected
    done = [e for e in entries if e["error"] is None]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(e["file"] for e in done)
    for e in done:
        assert hashlib.sha256((out / e["file"]).read_bytes()).hexdigest() == e["sha256"]
        if pipe is not None:
            args = {k: v for k, v in e["parameters"].items() if k != "model"}
            alone, = pipe.generate(**args)
            assert np.array_equal(np.asarray(Image.open(out / e["file"])), np.asarray(alone)), e["file"]
    return entries


def test_rows_from_txt_csv_jsonl_with_defaults_and_repeat(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n# a comment\na dog\n")
    (tmp_path / "p.csv").write_text("prompt,seed,steps,init_image\na cat,5,,\n\"a dog, running\",,4,x.png\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat", "seed": 5, "guidance_scale": 6}\n\n'
                                      '{"prompt": "a dog", "original_size": [32, 48]}\n')
    txt = rows.read(tmp_path / "p.txt", {"steps": 2}, "m")
    assert [(s, line, p) for s, line, p in txt] == [("p.txt:1", 1, {"model": "m", "steps": 2, "prompt": "a cat"}),
                                                   ("p.txt:4", 4, {"model": "m", "steps": 2, "prompt": "a dog"})]
    csv = rows.read(tmp_path / "p.csv", {"steps": 2})
    assert [line for _, line, _ in csv] == [2, 3]  # the header is line 1
    assert csv[0][2] == {"steps": 2, "prompt": "a cat", "seed": 5}  # an empty cell: the default
    assert csv[1][2] == {"steps": 4, "prompt": "a dog, running", "init_image": str(tmp_path / "x.png")}
    jsonl = rows.read(tmp_path / "p.jsonl", {"target_size": "48x32"})  # WxH, as the metadata writes it
    assert jsonl[0][2]["guidance_scale"] == 6.0 and jsonl[1][2]["original_size"] == (32, 48)  # generate()'s (h, w)
    assert jsonl[1][2]["target_size"] == (32, 48)
    assert [line for _, line, _ in jsonl] == [1, 3]

    units = rows.units(csv, repeat=3, salt=7)
    assert [(u.row, u.copy, u.params["seed"]) for u in units[:3]] == [(2, 0, 5), (2, 1, 6), (2, 2, 7)]
    drawn = [u.params["seed"] for u in units[3:]]
    assert drawn == [drawn[0], drawn[0] + 1, drawn[0] + 2] and units[3].seed_drawn
    assert drawn == [u.params["seed"] for u in rows.units(csv, repeat=3, salt=7)[3:]]  # same salt, same seeds
    assert rows.parse_param("guidance_scale=7.5") == ("guidance_scale", 7.5)
    assert rows.parse_param("sampler=euler") == ("sampler", "euler")


def test_newer_generate_arguments_typed(tmp_path, monkeypatch):
    """LoRAs, masks and inpainting options (generate() arguments of the adapters and inpainting work) from CSV
    text and JSON values; files next to the input made absolute."""
    monkeypatch.setattr(rows, "COLUMNS", (*rows.COLUMNS, "loras", "mask_image", "mask_blur", "composite"))
    (tmp_path / "style.safetensors").write_bytes(b"")
    (tmp_path / "p.csv").write_text('prompt,loras,mask_image,mask_blur,composite\n'
                                    'a,"{""style.safetensors"": 0.8, ""ink"": [0.5, 1]}",m.png,0,false\n'
                                    'b,{},,x,maybe\n')
    with pytest.raises(RowsError) as e:
        rows.read(tmp_path / "p.csv")
    assert "p.csv:3: mask_blur 'x' is not an integer" in str(e.value)
    (tmp_path / "p.csv").write_text("\n".join(tmp_path.joinpath("p.csv").read_text().splitlines()[:2]))
    (_, _, params), = rows.read(tmp_path / "p.csv")
    assert params == {"prompt": "a", "loras": {str(tmp_path / "style.safetensors"): 0.8, "ink": (0.5, 1.0)},
                      "mask_image": str(tmp_path / "m.png"), "mask_blur": 0, "composite": False}
    assert rows.read([{"prompt": "a", "loras": {"ink": 1}, "composite": True}])[0][2]["loras"] == {"ink": 1.0}


def test_bad_rows_all_listed_before_any_work(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("prompt,seed,colour\na cat,1,\na dog,x,\n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a cat", "steps": "many"}\n{"seed": 1}\n{"prompt": "ok"}\n'
                                        '{"prompt": 3\n[1]\n{"prompt": "a", "colour": 1}\n"a string"\n')
    with pytest.raises(RowsError) as e:
        rows.read(tmp_path / "bad.jsonl", {"stepz": 1})
    message = str(e.value)
    assert "\n" not in message and message.startswith("7 bad rows")
    for expected in ("--param unknown column 'stepz'", "bad.jsonl:1: steps 'many' is not an integer",
                     "bad.jsonl:2: no prompt", "bad.jsonl:4: not JSON", "bad.jsonl:5: a JSON object is needed",
                     "bad.jsonl:6: unknown column 'colour'", "bad.jsonl:7: a JSON object is needed, got str"):
        assert expected in message
    assert "bad.jsonl:3" not in message

    out = tmp_path / "out"
    assert batch_cli([str(tmp_path / "bad.csv"), "-o", str(out), "-m", "no-model", "-q"]) == 2
    err = capsys.readouterr().err
    assert "2 bad rows: bad.csv:1: unknown column 'colour'; bad.csv:3: seed 'x' is not an integer" in err
    assert not out.exists()  # nothing started
    assert batch_cli([str(tmp_path / "p.txt"), "-o", str(out), "--param", "steps"]) == 2
    with pytest.raises(RowsError, match=r"2 rows without a model \(rows\[0\], rows\[1\]\)"):
        sdkit.batch([{"prompt": "a"}, {"prompt": "b"}], out)
    assert not out.exists()


def test_local_batch_same_pixels_failed_rows_and_rerun(tmp_path, pipe, sd1_folder):
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines = [{"prompt": "a cat", "seed": 3},
             {"prompt": "a dog"},  # seedless: drawn, recorded, kept on rerun
             {"prompt": "a red thing", "seed": 4, "init_image": "red.png", "strength": 0.5},
             {"prompt": "x", "seed": 1, "model": str(tmp_path / "nowhere")},
             {"prompt": "y", "seed": 1, "init_image": "broken.png"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    summary = sdkit.batch(tmp_path / "rows.jsonl", out, sd1_folder, params=ARGS, repeat=2, progress=False)
    assert (summary.total, summary.done, summary.skipped) == (10, 6, 0)
    failed = dict(summary.failed)
    assert set(failed) == {"rows.jsonl:4", "rows.jsonl:5"}
    assert "nowhere" in failed["rows.jsonl:4"] and "cannot be read as an image" in failed["rows.jsonl:5"]
    entries = manifest(out)
    assert len(entries) == 10 and sum(e["error"] is not None for e in entries) == 4
    done = [e for e in entries if not e["error"]]
    assert all(e["file"] == f"{e['row']:05d}-{e['parameters']['seed']}.png" for e in done)
    assert all(e["seconds"] > 0 and e["worker"] for e in done)

    # rerun after a crash mid-write (a torn last line, a temporary file): done units stay, failed ones are
    # tried again (the broken file mended now)
    Image.new("RGB", (32, 32), (0, 0, 200)).save(tmp_path / "broken.png")
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"row": 1, "copy": 0, "sour')
    (out / ".00001-3-x.tmp").write_bytes(b"half a png")
    again = sdkit.batch(tmp_path / "rows.jsonl", out, sd1_folder, params=ARGS, repeat=2, progress=False)
    assert (again.done, again.skipped, [s for s, _ in again.failed]) == (2, 6, ["rows.jsonl:4"] * 2)
    entries = check_exactly_once(out, 10, pipe)
    assert [e["row"] for e in entries if e["error"]] == [4, 4]
    assert {e["file"] for e in entries if e["row"] == 2} == {e["file"] for e in done if e["row"] == 2}

    # another input into the same folder is refused before any work, as is a second driver
    with pytest.raises(ValueError, match="records another batch"):
        sdkit.batch([{"prompt": "other"}], out, sd1_folder, params=ARGS, progress=False)
    held = Manifest(out)
    with pytest.raises(ValueError, match="another sdkit-batch is writing there"):
        sdkit.batch(tmp_path / "rows.jsonl", out, sd1_folder, params=ARGS, repeat=2, progress=False)
    held.close()
    assert manifest(out) == entries and not list(out.glob(".*.tmp"))


def _run_cli(args: list[str]) -> subprocess.Popen:
    path = os.pathsep.join(str(ROOT / p) for p in ("", "backends", "desktop"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    return subprocess.Popen([sys.executable, "-c", "import sys; from sdkit.batch.cli import main; "
                            "sys.exit(main(sys.argv[1:]))", *args], env=env, stderr=subprocess.PIPE, text=True)


def _wait_for_lines(out: Path, n: int, process=None, thread=None, timeout: float = 60) -> list[dict]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (out / "manifest.jsonl").exists() and len(entries := manifest(out)) >= n:
            return entries
        assert process is None or process.poll() is None, process.stderr.read()
        assert thread is None or thread.is_alive()
        time.sleep(0.02)
    raise AssertionError(f"no {n} manifest lines in {timeout} s")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance (head on 127.0.0.1, 2 CPUs) for this module; its GCS address, for other drivers."""
    import ray  # the test extra installs it
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.mark.parametrize("runner", ["local", "ray"])
def test_cli_interrupted_then_rerun_makes_every_row_once(tmp_path, pipe, sd1_folder, runner, request):
    (tmp_path / "p.txt").write_text("".join(f"picture {i}\n" for i in range(8)))
    out = tmp_path / "out"
    args = [str(tmp_path / "p.txt"), "-o", str(out), "-m", str(sd1_folder), "-q", "--backend", "torch",
            *(f"--param={k}={v}" for k, v in (ARGS | {"steps": 6}).items())]
    if runner == "ray":  # a second driver on the module's cluster: two 1-CPU workers
        args += ["--ray", request.getfixturevalue("ray_cluster"), "--cpus-per-worker", "1"]
    first = _run_cli(args)
    _wait_for_lines(out, 2, first, timeout=120)
    first.send_signal(signal.SIGINT)
    assert first.wait(60) == 130, first.stderr.read()
    made = len(manifest(out))
    assert 2 <= made < 8
    second = _run_cli([*args, "--resume"])
    assert second.wait(180) == 0, second.stderr.read()
    assert f"{8 - made} images made, {made} already done, 0 failed" in second.stderr.read()
    check_exactly_once(out, 8, pipe)


def test_ray_worker_killed_mid_run(tmp_path, pipe, sd1_folder, ray_cluster):
    out = tmp_path / "out"
    rows_ = [{"prompt": f"picture {i}", "seed": i} for i in range(6)]
    result = {}
    run = threading.Thread(target=lambda: result.update(summary=sdkit.batch(
        rows_, out, sd1_folder, params=ARGS | {"steps": 4}, ray="auto", cpus_per_worker=1, backend="torch",
        progress=False)))  # ray="auto" in a process with a Ray session: that session's cluster
    run.start()
    first = _wait_for_lines(out, 1, thread=run, timeout=120)[0]
    os.kill(int(first["worker"].split(":")[1]), signal.SIGKILL)
    run.join(240)
    assert not run.is_alive()
    summary = result["summary"]
    assert (summary.done, summary.failed) == (6, [])
    entries = check_exactly_once(out, 6, pipe)
    workers = {e["worker"] for e in entries}
    assert len(workers) >= 3  # two actors, one of them restarted in a new process


def test_fsspec_url_output_and_resume_elsewhere(tmp_path, monkeypatch, sd1_folder):
    import fsspec  # installed with huggingface_hub
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    url = "memory://sdkit-test-batch/out"
    rows_ = [{"prompt": "a cat", "seed": 1}, {"prompt": "a dog", "seed": 2}]
    summary = sdkit.batch(rows_, url, sd1_folder, params=ARGS, progress=False)
    assert (summary.done, summary.failed) == (2, [])
    fs = fsspec.filesystem("memory")
    entries = [json.loads(line) for line in fs.cat_file("/sdkit-test-batch/out/manifest.jsonl").splitlines()]
    assert [e["file"] for e in entries] == ["00001-1.png", "00002-2.png"]
    for e in entries:
        assert hashlib.sha256(fs.cat_file(f"/sdkit-test-batch/out/{e['file']}")).hexdigest() == e["sha256"]
    # resumed where the driver's local copy is missing: the URL's manifest says both are done
    import shutil
    shutil.rmtree(tmp_path / "cache")
    again = sdkit.batch(rows_, url, sd1_folder, params=ARGS, progress=False)
    assert (again.done, again.skipped) == (0, 2)
    fs.rm("/sdkit-test-batch", recursive=True)


def test_local_workers_on_two_devices(tmp_path, pipe, sd1_folder):
    """Two local workers (threads; "cpu" twice stands in for two GPUs) share the rows, each made once."""
    out = tmp_path / "out"
    summary = sdkit.batch([{"prompt": f"picture {i}", "seed": i} for i in range(4)], out, sd1_folder,
                          params=ARGS, devices=["cpu", "cpu"], backend="torch", progress=False)
    assert (summary.done, summary.failed) == (4, [])
    check_exactly_once(out, 4, pipe)


def test_rows_grouped_by_model_and_size(tmp_path, sd1_folder):
    """Interleaved models and sizes are made group by group, so each worker loads a model once per group."""
    other = tmp_path / "other-sd1"
    other.symlink_to(sd1_folder)  # another model name, the same weights
    rows_ = [{"prompt": "a", "seed": i, "model": str(m), "width": w}
             for i, (m, w) in enumerate([(sd1_folder, 32), (other, 40), (sd1_folder, 40), (other, 32),
                                         (sd1_folder, 32)])]
    summary = sdkit.batch(rows_, tmp_path / "out", params=ARGS | {"height": 32}, progress=False)
    assert (summary.done, summary.failed) == (5, [])
    order = [(e["parameters"]["model"], e["parameters"]["width"]) for e in manifest(tmp_path / "out")]
    assert order == sorted(order, key=lambda g: (str(g[0]), g[1]))  # contiguous groups
    assert [e["row"] for e in manifest(tmp_path / "out")] == [1, 5, 3, 4, 2]


def test_ray_scheduler_keeps_each_worker_on_its_group():
    """cluster._schedule and its Dispenser with a stand-in for Ray: a worker keeps to its group, or takes one
    no other worker is on."""
    from sdkit.batch import cluster

    class Ref:
        def __init__(self, actor, unit):
            self.actor, self.unit = actor, unit

    class Actor:
        def __init__(self, name):
            self.name, self.groups = name, []
            self.run = self  # actor.run.remote(unit)

        def remote(self, unit):
            self.groups.append(unit.group)
            return Ref(self, unit)

    class FakeRay:  # completes the oldest submission first
        def wait(self, refs, num_returns, timeout):
            return refs[:1], refs[1:]

        def get(self, ref):
            return {"file": "x", "worker": ref.actor.name}

    table = [(f"rows[{i}]", i + 1, {"prompt": "a", "model": m, "width": 32}) for i, m in enumerate("ABABABAB")]
    actors = [Actor("0"), Actor("1")]
    done = []
    cluster._schedule(FakeRay(), actors, Dispenser(rows.units(table, salt=0), 2),
                      lambda unit, result: done.append(unit.row), threading.Event())
    assert sorted(done) == list(range(1, 9))
    # each model loaded once: one worker makes the A rows, the other the B rows
    assert [{g[0] for g in actor.groups} for actor in actors] == [{"A"}, {"B"}]
