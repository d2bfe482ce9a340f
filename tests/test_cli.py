"""The command-line tool: bad input gives one clear line on stderr and exit code 2."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hcdc.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _graph_npz(path: Path, **override):
    arrays = dict(
        x=np.eye(4, dtype=np.float32),
        edge_index=np.array([[0, 1, 2], [1, 2, 3]]),
        y=np.array([0, 1, 0, 1]),
        train_mask=np.array([1, 1, 0, 0], bool),
        val_mask=np.array([0, 0, 1, 0], bool),
        test_mask=np.array([0, 0, 0, 1], bool),
    )
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def _assert_one_line_error(code, err, *words, exit_code=2):
    assert code == exit_code
    # progress bars may precede it; the message itself is one line
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("hcdc")]
    assert len(lines) == 1 and lines[0].startswith("hcdc: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])


def test_datasets_lists_a_good_graph_file(tmp_path, capsys):
    code, out, _ = _run(capsys, "datasets", "--graph-file", str(_graph_npz(tmp_path / "g.npz")))
    assert code == 0
    assert "4 nodes, 3 edges, 4 feat, 2 cls" in out and "2/1/1" in out


@pytest.mark.parametrize(
    "override,words",
    [
        (dict(x=None), ["missing", "x"]),
        (dict(x=np.eye(5, dtype=np.float32)), ["5"]),
        (dict(x=np.array([[np.nan, 0, 0, 0]] + [[0, 0, 0, 0]] * 3, dtype=np.float32)), ["nan"]),
        (dict(y=np.array([0, 1, 0, -3])), ["label"]),
        (dict(val_mask=np.array([1, 0, 1, 0], bool)), ["overlap"]),
        (dict(edge_index=np.array([[0, 1], [1, 9]])), ["edge"]),
    ],
    ids=["missing-key", "wrong-shape", "nan", "label-range", "mask-overlap", "edge-range"],
)
def test_bad_graph_files_exit_2(tmp_path, capsys, override, words):
    code, _, err = _run(capsys, "datasets", "--graph-file", str(_graph_npz(tmp_path / "g.npz", **override)))
    _assert_one_line_error(code, err, *words)


def test_missing_and_corrupt_files_exit_2(tmp_path, capsys):
    code, _, err = _run(capsys, "datasets", "--graph-file", str(tmp_path / "nope.npz"))
    _assert_one_line_error(code, err, "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = _run(capsys, "datasets", "--graph-file", str(tmp_path / "junk.npz"))
    _assert_one_line_error(code, err, "junk.npz")


def test_bad_image_files_exit_2(tmp_path, capsys):
    np.savez(tmp_path / "float.npz", x=np.zeros((4, 8, 8, 3), np.float32), y=np.zeros(4, int))
    code, _, err = _run(capsys, "datasets", "--image-file", str(tmp_path / "float.npz"))
    _assert_one_line_error(code, err, "uint8")
    np.savez(tmp_path / "labels.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array([0, 1, 2, -1]))
    code, _, err = _run(capsys, "datasets", "--image-file", str(tmp_path / "labels.npz"))
    _assert_one_line_error(code, err, "label")
    # a truncated CIFAR-10-style archive
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(20):
            pixels = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            jpg = io.BytesIO()
            Image.fromarray(pixels).save(jpg, format="JPEG")
            data = jpg.getvalue()
            info = tarfile.TarInfo(f"train/cat/{i:04d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "cut.tar.gz").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    code, _, err = _run(capsys, "datasets", "--image-file", str(tmp_path / "cut.tar.gz"))
    _assert_one_line_error(code, err, "cut.tar.gz")
    (tmp_path / "notes.txt").write_text("not images\n")
    code, _, err = _run(capsys, "datasets", "--image-file", str(tmp_path / "notes.txt"))
    _assert_one_line_error(code, err, "notes.txt is not an image dataset")
    code, _, err = _run(capsys, "datasets", "--image-file", str(tmp_path / "absent"))
    _assert_one_line_error(code, err, "image dataset not found", "absent")


def test_truncated_planetoid_under_data_root_exits_2(tmp_path, capsys):
    raw = SHARED / "planetoid" / "Cora" / "raw"
    if not raw.is_dir():
        pytest.skip("shared Cora files not available")
    dest = tmp_path / "planetoid" / "Cora" / "raw"
    shutil.copytree(raw, dest)
    data = (dest / "ind.cora.allx").read_bytes()
    (dest / "ind.cora.allx").write_bytes(data[: len(data) // 3])
    code, _, err = _run(capsys, "datasets", "--data-root", str(tmp_path))
    _assert_one_line_error(code, err, "ind.cora.allx")


def test_an_output_the_file_system_refuses_is_one_line_and_exit_1(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "im.npz", x=rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8), y=np.repeat(np.arange(3), 20))
    (tmp_path / "a-file").write_text("")
    code, _, err = _run(capsys, "condense", "--image-file", str(tmp_path / "im.npz"), "--method", "random", "--ipc", "2",
                        "--protocol", "smoke", "--out", str(tmp_path / "a-file" / "proxy"))
    _assert_one_line_error(code, err, "a-file", exit_code=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "im.npz"]


def test_info_on_missing_proxy_exits_2(tmp_path, capsys):
    code, _, err = _run(capsys, "info", str(tmp_path / "no-proxy"))
    _assert_one_line_error(code, err, "no-proxy")


def test_unknown_subcommand_is_argparse_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["condense-everything"])
    assert exc.value.code == 2


def test_warnings_are_one_plain_line(capsys, monkeypatch):
    import warnings

    from hcdc import cli

    def warns(args):
        warnings.warn("this will be slow", stacklevel=2)
        return 0

    monkeypatch.setattr(cli, "_cmd_info", warns)
    code, _, err = _run(capsys, "info", "anything")
    assert code == 0 and err == "hcdc: warning: this will be slow\n"

