"""The real CLI: in-process through `main(argv)` and, for exit codes and imports, as a subprocess."""

import json
import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto, helper

import trimkit
from trimkit.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trimkit.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_does_not_import_runtimes():
    code = ("import sys; from trimkit.cli import main; rc = main(['--help']);"
            "bad = [m for m in ('onnxruntime', 'tensorrt', 'torch', 'polygraphy', 'openvino', 'tritonclient') "
            "if m in sys.modules];"
            "print(bad); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "init" in r.stdout and "inspect" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_init_then_inspect(tmp_path, capsys):
    out = tmp_path / "base.pt"
    assert main(["init", "--preset", "tiny", "--data", "easyvqa", "--out", str(out), "--seed", "3"]) == 0
    assert out.exists()
    assert main(["inspect", str(out), "--json", str(tmp_path / "info.json")]) == 0
    printed = capsys.readouterr().out
    assert "FLOPs per layer" in printed and "trimmers" in printed
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["meta"] == {"preset": "tiny", "data": "easyvqa", "seed": 3}
    assert info["parameters"]["total"] < 1_000_000
    assert len(info["layers"]) == 3 and info["labels"][0] == "circle"
    # refusing to overwrite, then --force
    assert main(["init", "--out", str(out)]) == 2
    assert main(["init", "--out", str(out), "--force"]) == 0
    # the image stem: the preset's by default, --stem overrides it
    assert main(["init", "--out", str(out), "--force", "--stem", "conv"]) == 0
    assert main(["inspect", str(out), "--json", str(tmp_path / "conv.json")]) == 0
    assert json.loads((tmp_path / "conv.json").read_text())["model_config"]["stem"] == "conv"
    assert info["model_config"]["stem"] == "patch" and not info["model_config"]["pool_product"]
    assert main(["init", "--out", str(out), "--force", "--pool-product"]) == 0
    assert trimkit.load_checkpoint(out).config.pool_product


@pytest.mark.parametrize("content", [b"not a checkpoint", b""])
def test_inspect_bad_file_is_one_line_exit_2(tmp_path, content):
    bad = tmp_path / "not-a-checkpoint.pt"
    bad.write_bytes(content)
    r = run_cli("inspect", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in r.stderr


def test_debug_env_shows_traceback(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"junk")
    r = subprocess.run([sys.executable, "-m", "trimkit.cli", "inspect", str(bad)], capture_output=True, text=True,
                       timeout=120, env={**__import__("os").environ, "TRIMKIT_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_unknown_dataset_and_preset(tmp_path):
    assert main(["init", "--data", "nope", "--out", str(tmp_path / "a.pt")]) == 2
    assert main(["init", "--preset", "huge", "--out", str(tmp_path / "a.pt")]) == 2
    assert not (tmp_path / "a.pt").exists()


def test_inspect_onnx(tmp_path, capsys):
    x = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "text_len"])
    y = helper.make_tensor_value_info("keep_counts", TensorProto.INT64, ["batch", "text_len"])
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["keep_counts"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model, {"trimkit_mode": "adaptive", "labels": '["yes", "no"]'})
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["inspect", str(path), "--json", str(tmp_path / "i.json")]) == 0
    info = json.loads((tmp_path / "i.json").read_text())
    assert info["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "text_len"]}
    assert info["metadata"]["trimkit_mode"] == "adaptive" and info["opsets"]["ai.onnx"] == 18
    assert "Identity" in capsys.readouterr().out
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    assert main(["inspect", str(bad)]) == 2


def test_precision_choices_of_export_and_train(tmp_path, capsys):
    """export --precision is fp32|fp16 (the graph; an fp16 export is tests/export/test_onnx.py's), train/pretrain
    --precision is fp32|bf16 (autocast)."""
    ckpt = tmp_path / "base.pt"
    assert main(["init", "--preset", "tiny", "--data", "easyvqa", "--out", str(ckpt)]) == 0
    for cmd, bad in (("export", "bf16"), ("train", "fp16"), ("pretrain", "fp16")):
        capsys.readouterr()
        assert main([cmd, str(ckpt), "--precision", bad, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err  # a usage error: one line, like any bad input
        assert "--precision" in err and len(err.strip().splitlines()) == 1, (cmd, err)
    assert main(["train", str(ckpt), "--questions-per-image", "0", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--questions-per-image must be >= 1" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


NUMERIC_OPTIONS = [  # (command words before the option, option): counts, rates and sizes
    (["eval", "CKPT"], "--samples"),
    (["verify", "CKPT", "ART.onnx"], "--samples"),
    (["verify", "CKPT", "ART.onnx"], "--repeats"),
    (["verify", "CKPT", "ART.onnx"], "--threads"),
    (["bench", "CKPT", "--out", "OUT"], "--samples"),
    (["bench", "CKPT", "--out", "OUT"], "--calib-samples"),
    (["bench", "CKPT", "--out", "OUT"], "--repeats"),
    (["train", "CKPT", "--out", "OUT.pt"], "--lr"),
    (["train", "CKPT", "--out", "OUT.pt"], "--trimmer-lr"),
    (["pretrain", "CKPT", "--out", "OUT.pt"], "--lr"),
]


@pytest.mark.parametrize("words,option", NUMERIC_OPTIONS)
@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_numeric_options_refuse_bad_values_in_one_line(words, option, value, tmp_path, capsys):
    """Checked when parsed: exit 2, one line naming the option, nothing written (the checkpoint need not exist)."""
    args = [str(tmp_path / w) if w.isupper() or "." in w else w for w in words]
    assert main([*args, option, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0], err
    assert not any(tmp_path.iterdir())


def test_ctrl_c_is_reported_as_interrupted_whatever_error_it_turned_into(tmp_path, monkeypatch, capsys):
    """An import cut short by Ctrl-C can surface as "not installed": the CLI knows Ctrl-C was pressed."""
    import os
    import signal
    import time

    import trimkit.pretrained
    from trimkit.errors import MissingDependencyError

    def import_model(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)
        except KeyboardInterrupt:
            raise MissingDependencyError("onnxruntime is not installed: pip install onnxruntime") from None

    monkeypatch.setattr(trimkit.pretrained, "import_model", import_model)
    rc = main(["import", "--vision", "v", "--text", "t", "--out", str(tmp_path / "x.pt")])
    assert rc == 130 and capsys.readouterr().err.splitlines() == ["trimkit: interrupted"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_ctrl_c_during_an_import_in_a_real_process(tmp_path):
    """`trimkit import` of an ONNX encoder, interrupted while `import onnx` runs (a stand-in package that
    turns the interrupt into an ImportError, as an extension module's initialization does)."""
    import os
    import signal

    fake = tmp_path / "site" / "onnx"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import sys, time\n"
        "print('importing onnx', flush=True)\n"
        "try:\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    raise ImportError('numpy.core.multiarray failed to import') from None\n")
    (tmp_path / "vit.onnx").write_bytes(b"x")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-m", "trimkit.cli", "import", "--vision", str(tmp_path / "vit.onnx"),
                             "--text", str(tmp_path), "--out", str(tmp_path / "x.pt")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "importing onnx"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.splitlines() == ["trimkit: interrupted"], err


def test_import_optional_tells_missing_from_broken_from_interrupted(tmp_path, monkeypatch):
    from trimkit.errors import MissingDependencyError, import_optional

    with pytest.raises(MissingDependencyError, match="^install me$"):
        import_optional("trimkit_no_such_package", "install me")
    (tmp_path / "trimkit_broken_pkg").mkdir()
    (tmp_path / "trimkit_broken_pkg" / "__init__.py").write_text("raise ImportError('libfoo.so: cannot open')\n")
    (tmp_path / "trimkit_cut_pkg.py").write_text(
        "try:\n    raise KeyboardInterrupt\nexcept KeyboardInterrupt:\n    raise ImportError('init failed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingDependencyError, match=r"trimkit_broken_pkg is installed but does not import "
                                                     r"\(libfoo.so: cannot open\)"):
        import_optional("trimkit_broken_pkg", "install me")
    with pytest.raises(KeyboardInterrupt):
        import_optional("trimkit_cut_pkg", "install me")
    # a package whose own dependency is missing: the install hint and that dependency, not "reinstall it"
    (tmp_path / "trimkit_dep_pkg").mkdir()
    (tmp_path / "trimkit_dep_pkg" / "__init__.py").write_text("")
    (tmp_path / "trimkit_dep_pkg" / "sub.py").write_text("import trimkit_missing_dep\n")
    with pytest.raises(MissingDependencyError, match=r"^install me \(it needs trimkit_missing_dep"):
        import_optional("trimkit_dep_pkg.sub", "install me")
