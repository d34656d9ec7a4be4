"""GGUF export: every llama.cpp architecture gothic maps to, checked in a real llama.cpp (llama-cpp-python,
slow lane) token for token and logit for logit; the tokenizer as llama.cpp reads it; the Modelfile; bad input."""

from __future__ import annotations

import contextlib
import errno
import io
import re
import sys
import tempfile

import pytest
import torch

from gothic.config import ModelConfig
from gothic.errors import GothicError
from gothic.export import export_checkpoint
from gothic.export_gguf import gguf_architecture, gguf_filename, gguf_tolerance
from gothic.generation import generate_tokens

from conftest import GENERATION_TEXT, ROOT, committed_text, save_tiny_checkpoint, tiny_gpt

sys.path.insert(0, str(ROOT / "bench"))
from common import llama_cpp_without_repacking  # noqa: E402  (bench/common.py: the bench opens llama.cpp alike)

gguf = pytest.importorskip("gguf", reason="the export extra (gguf) is not installed")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROPE = {"pos_embedding": "rope", "norm": "rmsnorm"}
# one entry per llama.cpp architecture: the switches that pick it
CASES = {
    "gpt2": {},
    "llama": {**ROPE, "mlp": "swiglu"},
    "qwen3": {**ROPE, "mlp": "swiglu", "qk_norm": True, "bias": False, "tie_embeddings": False},
    "arcee": {**ROPE, "mlp": "relu2", "bias": False},
    "apertus": {**ROPE, "mlp": "relu2", "qk_norm": True, "bias": False, "tie_embeddings": False},  # the demo's
}
REFUSED = {  # switches llama.cpp computes in no architecture, and a switch the refusal must name
    "GPT-2 with ReLU^2": ({"mlp": "relu2"}, "model.mlp: gelu"),
    "rope + LayerNorm": ({"pos_embedding": "rope"}, "model.norm: rmsnorm"),
    "QK-norm + SwiGLU with biases": ({**ROPE, "mlp": "swiglu", "qk_norm": True}, "model.bias: false"),
    "rope + GELU": ({**ROPE, "mlp": "gelu"}, "model.mlp: relu2"),
    "rope + ReLU^2 with biases": ({**ROPE, "mlp": "relu2"}, "model.bias: false"),
    "learned positions + RMSNorm": ({"norm": "rmsnorm"}, "model.pos_embedding: rope"),
}
TEXTS = ["The night was dark.", GENERATION_TEXT, "  two  spaces,\ttab\n\n\nnewlines   ", "Café 🐉 東京… “ok”'s we'll",
         " trailing space ", "x" * 300]


def random_model(vocab_size: int, block_size: int = 64, **switches):
    """Spread-out weights and norm gains (so a wrong mapping cannot hide in near-zero logits), 64 wide
    so q8_0's blocks of 32 fit every matrix."""
    from gothic.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=block_size, **switches), vocab_size).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if p.dim() == 1 and name.endswith("weight") else 0.0, 0.15 if p.dim() >= 2 else 0.2)
    return model


def export(tmp_path, model, tokenizer_path, weight_type="f32", **kw):
    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", model, tokenizer_path, carry_tokenizer=True)
    return export_checkpoint(ckpt, tmp_path / "export", formats=("gguf",), gguf_type=weight_type, **kw)


def gothic_greedy(model, prompt: list[int], n: int) -> list[int]:
    from gothic.config import SamplingSettings

    settings = SamplingSettings(max_new_tokens=n, temperature=0.0)
    return [int(t[0]) for t in generate_tokens(model, torch.tensor([prompt]), settings, [torch.Generator()])]


# --- the mapping, the file, the Modelfile (fast) -------------------------------------------------------

@pytest.mark.parametrize("arch", list(CASES))
def test_each_architecture_maps_to_its_llama_cpp_graph(arch):
    assert gguf_architecture(ModelConfig(**CASES[arch])) == (arch, "")


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_llama_cpp_cannot_compute_is_refused_naming_switches_that_export(name, tmp_path, tiny_tokenizer_path,
                                                                            capsys):
    from gothic.cli_export import export_main

    switches, hint = REFUSED[name]
    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", tiny_gpt(300, **switches), tiny_tokenizer_path,
                                carry_tokenizer=True)
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "out"), "--format", "gguf"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot export GGUF" in err and hint in err, err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["best.pt"]



def test_the_export_stage_writes_no_gguf_for_a_model_llama_cpp_cannot_compute_and_says_why(tmp_path,
                                                                                          tiny_tokenizer_path):
    """The stage asks for GGUF only where llama.cpp computes the model (gguf_if_possible): switches that
    train well but have no llama.cpp graph must not fail `dvc exp run` at its last stage."""
    switches, hint = REFUSED["rope + GELU"]
    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", tiny_gpt(300, **switches), tiny_tokenizer_path,
                                carry_tokenizer=True)
    result = export_checkpoint(ckpt, tmp_path / "out", formats=("transformers", "gguf"), gguf_if_possible=True,
                               verify=False)
    assert result.gguf is None and hint in result.gguf_skipped and "no GGUF: " in result.summary()
    assert (tmp_path / "out" / "model.safetensors").is_file() and not list((tmp_path / "out").glob("*.gguf"))
    with pytest.raises(GothicError, match="cannot export GGUF"):  # asked for GGUF alone: a refusal, as before
        export_checkpoint(ckpt, tmp_path / "out2", formats=("gguf",), gguf_if_possible=True)

def test_the_file_declares_gpt2_byte_level_bpe_with_our_merges(tmp_path, tiny_tokenizer_path, tiny_tokenizer):
    import json

    result = export(tmp_path, random_model(300), tiny_tokenizer_path, "q8_0")
    reader = gguf.GGUFReader(str(tmp_path / "export" / result.gguf.filename))

    def field(key):
        return reader.fields[key].contents()

    spec = json.loads(tiny_tokenizer_path.read_text())
    eot = tiny_tokenizer.token_to_id("<|endoftext|>")
    assert (field("general.architecture"), field("tokenizer.ggml.model"), field("tokenizer.ggml.pre")) == \
        ("gpt2", "gpt2", "gpt-2")
    assert field("tokenizer.ggml.tokens") == [tiny_tokenizer.id_to_token(i) for i in range(300)]
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    assert field("tokenizer.ggml.merges") == merges
    assert field("tokenizer.ggml.eos_token_id") == eot and field("tokenizer.ggml.add_bos_token") is False
    assert field("tokenizer.ggml.token_type")[eot] == gguf.TokenType.CONTROL
    assert field("gpt2.context_length") == 64
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_qkv.weight"] == types["token_embd.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == types["blk.0.attn_qkv.bias"] == "F32"


def test_modelfile_continues_the_prompt_with_the_sampling_defaults_and_stops_at_endoftext(tmp_path,
                                                                                         tiny_tokenizer_path):
    from gothic.config import SamplingSettings

    sampling = SamplingSettings(temperature=0.7, top_k=20, top_p=0.95, repetition_penalty=1.1, max_new_tokens=50)
    export(tmp_path, random_model(300, **CASES["apertus"]), tiny_tokenizer_path, "f16", sampling=sampling)
    lines = (tmp_path / "export" / "Modelfile").read_text().splitlines()
    assert lines[0] == f"FROM ./{gguf_filename('f16')}" and (tmp_path / "export" / gguf_filename("f16")).is_file()
    for expected in ('TEMPLATE """{{ .Prompt }}"""', "PARAMETER temperature 0.7", "PARAMETER top_k 20",
                     "PARAMETER top_p 0.95", "PARAMETER repeat_penalty 1.1", "PARAMETER num_predict 50",
                     "PARAMETER num_ctx 64", 'PARAMETER stop "<|endoftext|>"'):
        assert expected in lines, expected


def test_model_card_names_the_gguf_its_size_and_how_to_run_it(tmp_path, tiny_tokenizer_path):
    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", random_model(300), tiny_tokenizer_path, carry_tokenizer=True)
    result = export_checkpoint(ckpt, tmp_path / "out", formats=("transformers", "gguf"), gguf_type="f16")
    card = (tmp_path / "out" / "README.md").read_text()
    size = result.gguf.size
    assert re.fullmatch(r"\d+ KiB|\d+\.\d MiB", size)
    for expected in (f"`model-f16.gguf` ({size}, f16 weights)", "`gpt2` architecture", 'Llama("out/model-f16.gguf"',
                     "ollama create mybooks -f out/Modelfile", "GPT2LMHeadModel"):
        assert expected in card, expected


# --- bad input ---------------------------------------------------------------------------------------

def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """gothic-export in an empty folder: its --metrics and --samples defaults are relative, and the
    workspace's own (after `make demo`) must not reach a test's export."""
    from gothic.cli_export import export_main

    with tempfile.TemporaryDirectory() as empty, contextlib.chdir(empty), pytest.raises(SystemExit) as exit_info:
        export_main(args)
    return exit_info.value.code, capsys.readouterr().err.strip()


def test_a_folder_that_is_not_an_export_is_never_replaced(tmp_path, tiny_tokenizer_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", random_model(300), tiny_tokenizer_path, carry_tokenizer=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "README.md").write_text("# my project\n")
    code, err = run_cli(["--checkpoint", str(ckpt), "--out-dir", str(mine), "--format", "gguf"], capsys)
    assert code != 0 and len(err.splitlines()) == 1 and "is not a gothic export (it holds thesis.tex)" in err
    assert (mine / "thesis.tex").read_text() == "years of work"
    (mine / "thesis.tex").unlink()  # a README.md that is not our model card is not ours either
    code, err = run_cli(["--checkpoint", str(ckpt), "--out-dir", str(mine), "--format", "gguf"], capsys)
    assert code != 0 and "its README.md is not a gothic model card" in err
    assert (mine / "README.md").read_text() == "# my project\n"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, err = run_cli(["--checkpoint", str(ckpt), "--out-dir", str(a_file), "--format", "gguf"], capsys)
    assert code != 0 and "exists and is not a folder" in err and a_file.read_text() == "x"
    # an earlier export is ours: replaced, also by another format
    for formats in (["transformers", "gguf"], ["gguf"]):
        assert run_cli(["--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "out"), "--no-verify",
                        "--format", *formats], capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Modelfile", "README.md", "model-f16.gguf"]


def test_a_checkpoint_without_its_tokenizer_is_one_line(tmp_path, tiny_tokenizer_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "old.pt", random_model(300), tiny_tokenizer_path)  # carries none
    code, err = run_cli(["--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "out"), "--format", "gguf"], capsys)
    assert code != 0 and len(err.splitlines()) == 1 and "carries no tokenizer: pass --tokenizer PATH" in err
    assert not (tmp_path / "out").exists()


def test_a_full_disk_while_writing_leaves_no_partial_file_and_the_old_export(tmp_path, tiny_tokenizer_path, capsys,
                                                                          monkeypatch):
    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", random_model(300), tiny_tokenizer_path, carry_tokenizer=True)
    args = ["--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "out"), "--format", "gguf"]
    assert run_cli(args, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def disk_fills(self, *args, **kwargs):  # the header and metadata reach the file, then the disk is full
        self.fout[0].write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_fills)
    code, err = run_cli(args + ["--gguf-type", "q8_0"], capsys)
    assert code == 1 and err == (f"gothic-export: error: cannot write {tmp_path / 'out'}: No space left on device "
                                 "(free some disk space and run again; files written before are intact)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "out"], "a temporary file was left behind"
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before



def test_an_export_folder_that_cannot_be_replaced_loses_nothing(tmp_path, tiny_tokenizer_path, capsys, monkeypatch):
    """export/ as a mount point: renaming it fails (EBUSY), so the earlier export must not have been
    deleted first, and nothing half-written may stay beside it."""
    from pathlib import Path as PathType

    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", random_model(300), tiny_tokenizer_path, carry_tokenizer=True)
    args = ["--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "out"), "--format", "gguf"]
    assert run_cli(args, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    rename = PathType.rename

    def mount_point(self, target):
        if self == tmp_path / "out":
            raise OSError(errno.EBUSY, "Device or resource busy")
        return rename(self, target)

    monkeypatch.setattr(PathType, "rename", mount_point)
    code, err = run_cli(args + ["--gguf-type", "q8_0"], capsys)
    assert code != 0 and err == f"gothic-export: error: cannot write {tmp_path / 'out'}: Device or resource busy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "out"], "a temporary folder was left behind"
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before

# --- a real llama.cpp (slow: llama-cpp-python, built from source by make setup) -------------------------------

@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python (the dev extra) is not installed")


def open_llama(llama_cpp, path, n_ctx: int):
    """llama.cpp on one thread with a float32 KV cache (its default f16 cache would round every key
    and value), scoring every position."""
    f32 = 0  # GGML_TYPE_F32
    with llama_cpp_without_repacking():
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=1, logits_all=True, type_k=f32,
                               type_v=f32, verbose=False)


def llama_greedy(llm, prompt: list[int], n: int) -> list[int]:
    """llama.cpp's own greedy sampler (temperature 0), n tokens past the prompt (not stopping at EOT)."""
    out = []
    for token in llm.generate(prompt, temp=0.0, reset=True):
        out.append(int(token))
        if len(out) == n:
            return out
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "weight_type"),  # every architecture in f32; the rounded types on the demo's
                         [(arch, "f32") for arch in CASES] + [("apertus", t) for t in ("f16", "bf16", "q8_0")])
def test_llama_cpp_computes_what_gothic_does(arch, weight_type, tmp_path, tiny_tokenizer_path, llama_cpp):
    model = random_model(300, **CASES[arch])
    result = export(tmp_path, model, tiny_tokenizer_path, weight_type)
    assert result.gguf.architecture == arch
    llm = open_llama(llama_cpp, tmp_path / "export" / result.gguf.filename, n_ctx=64)
    prompt = torch.randint(0, 300, (48,), generator=torch.Generator().manual_seed(3)).tolist()
    llm.reset()
    llm.eval(prompt)
    theirs = torch.from_numpy(llm.scores[:48].copy())
    with torch.no_grad():
        ours = model(torch.tensor([prompt]))[0][0]
    diff = (ours - theirs).abs().max().item()
    assert diff <= gguf_tolerance(arch, weight_type), f"{arch} {weight_type}: logits differ by {diff:.2e}"
    assert (ours - theirs.roll(1, dims=1)).abs().max().item() > 10 * gguf_tolerance(arch, weight_type)
    if weight_type in ("f32", "f16"):  # rounder types may flip a near tie among random logits
        assert llama_greedy(llm, prompt[:8], 40) == gothic_greedy(model, prompt[:8], 40)


@pytest.mark.slow
def test_llama_cpp_tokenizes_like_gothic(tmp_path, tiny_tokenizer_path, tiny_tokenizer, llama_cpp):
    result = export(tmp_path, random_model(300), tiny_tokenizer_path, "f16")
    llm = open_llama(llama_cpp, tmp_path / "export" / result.gguf.filename, n_ctx=64)
    for text in TEXTS:
        ours = tiny_tokenizer.encode(text).ids
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ours, text
        assert llm.detokenize(ours).decode() == text
    assert llm.token_eos() == tiny_tokenizer.token_to_id("<|endoftext|>")


@pytest.mark.slow
def test_a_trained_demo_model_continues_in_llama_cpp_as_in_gothic(train_bins, tiny_tokenizer_path, tmp_path,
                                                                   tiny_tokenizer, llama_cpp):
    """The demo profile's architecture, trained by gothic's train, exported at every weight type: the
    README's llama.cpp lines (run as written, on this export) continue the prompt with gothic's greedy text."""
    from gothic.loading import load_model
    from gothic.train import train

    from conftest import tiny_model_config, tiny_train_config

    models = tmp_path / "models"
    train(tiny_model_config(**CASES["apertus"]), tiny_train_config(max_iters=30), train_bins, tiny_tokenizer_path,
          models)
    model, _ = load_model(models / "best.pt", device="cpu")
    prompt = tiny_tokenizer.encode("The castle").ids
    ours = tiny_tokenizer.decode(gothic_greedy(model, prompt, 12))
    readme = llama_cpp_lines(committed_text("README.md"))
    for weight_type in ("f32", "f16", "q8_0"):
        folder = tmp_path / weight_type
        export_checkpoint(models / "best.pt", folder, formats=("transformers", "gguf"), gguf_type=weight_type)
        code = readme.replace("export/model-f16.gguf", str(folder / gguf_filename(weight_type)))
        code = code.replace('"The night was", max_tokens=60', '"The castle", max_tokens=12, temperature=0')
        out = io.StringIO()
        with contextlib.redirect_stdout(out), llama_cpp_without_repacking():
            exec(compile(code, "README.md", "exec"), {})
        assert out.getvalue().rstrip("\n") == ours, weight_type


def llama_cpp_lines(readme: str) -> str:
    """The README's Python block that runs the GGUF in llama.cpp."""
    match = re.search(r"```python\n(from llama_cpp import Llama\n.*?)```", readme, re.S)
    assert match, "README.md has no llama.cpp block"
    return match.group(1)


def test_the_readme_shows_the_commands_the_export_supports():
    readme = committed_text("README.md")
    code = llama_cpp_lines(readme)
    assert f'Llama("export/{gguf_filename("f16")}"' in code
    assert "ollama create mybooks -f export/Modelfile" in readme
    assert "--format gguf" in readme


def test_a_wrong_rotary_layout_would_be_caught():
    """The negative control of the permutation: llama.cpp's pairs are not gothic's halves."""
    from gothic.export_gguf import _rope_pairs

    w = torch.arange(8.0)[:, None]
    assert _rope_pairs(w, 1).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_an_unknown_format_or_weight_type_is_refused(tmp_path):
    with pytest.raises(GothicError, match="unknown export format 'onnx'"):
        export_checkpoint(tmp_path / "best.pt", tmp_path / "out", formats=("onnx",))


@pytest.mark.subprocess
def test_the_speed_benchmark_runs_both_runtimes(tmp_path, llama_cpp):
    import json
    import subprocess

    from conftest import ROOT, venv_env

    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gguf_speed.py"), "--size", "tiny", "--new-tokens",
                           "8", "--repeats", "1", "--threads", "1", "--types", "f16", "q8_0",
                           "--results-dir", str(tmp_path)], cwd=ROOT, env=venv_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((tmp_path / "gguf_speed.json").read_text())["rows"]
    assert [(r["runtime"], r["weights"]) for r in rows] == [("llama.cpp", "f16"), ("llama.cpp", "q8_0"),
                                                           ("gothic", "float32"), ("gothic", "bfloat16")]
    assert all(r["tokens/s"] > 0 for r in rows)


@pytest.mark.dvc
@pytest.mark.xdist_group("demo")
def test_a_demo_model_trained_by_make_demo_continues_in_llama_cpp_as_in_gothic(made_demo, llama_cpp):
    """The demo's architecture (at tiny sizes) as `make demo` trains and exports it: llama.cpp's greedy tokens
    are gothic's."""
    from gothic.loading import load_model
    from gothic.tokenizer import load_tokenizer

    clone = made_demo[0]
    export_dir = clone / "export"
    assert {"model.safetensors", "model-f16.gguf", "Modelfile", "README.md"} <= {p.name for p in export_dir.iterdir()}
    assert "as its `apertus` architecture" in (export_dir / "README.md").read_text()
    model, _ = load_model(clone / "models" / "best.pt", device="cpu")
    prompt = load_tokenizer(clone / "data" / "tokenizer.json").encode("The castle").ids
    llm = open_llama(llama_cpp, export_dir / "model-f16.gguf", n_ctx=model.cfg.block_size)
    n = model.cfg.block_size - len(prompt)
    assert llama_greedy(llm, prompt, n) == gothic_greedy(model, prompt, n)


@pytest.mark.slow
def test_llama_cpp_tokenizes_a_novel_like_gothic_with_a_full_vocabulary(shared_corpus, tmp_path, llama_cpp):
    """4096 merges learned from a real book, then another book (curly quotes, dashes, accents) encoded by both."""
    from gothic.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

    books = sorted(shared_corpus.glob("*.txt"))
    save_tokenizer(train_tokenizer(books[:1], 4096, 2), tmp_path / "tokenizer.json")
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    result = export(tmp_path, random_model(4096), tmp_path / "tokenizer.json", "q8_0")
    llm = open_llama(llama_cpp, tmp_path / "export" / result.gguf.filename, n_ctx=64)
    text = books[1].read_text(encoding="utf-8")[:200_000] + " Émile’s café — naïve “façade” 東京 🐉\r\n\t end "
    ours = tok.encode(text).ids
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == ours
    assert llm.detokenize(ours).decode() == text
