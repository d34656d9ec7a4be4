"""DVC stage `export`: models/best.pt + metrics + samples -> export/ (a folder transformers loads and/or a GGUF
for llama.cpp with an Ollama Modelfile, as params.yaml's export.formats says, with a model card).

    python stages/export.py models/best.pt metrics samples/samples.md export

export/ is declared under `artifacts:` in dvc.yaml, so `dvc push` shares it through a remote.
"""

import sys

from gothic.errors import GothicError, printable, run_main
from gothic.export import TOLERANCE, export_checkpoint
from gothic.params_file import load_params


def main(checkpoint_path: str, metrics_dir: str, samples_path: str, out_dir: str) -> None:
    params = load_params("params.yaml")
    result = export_checkpoint(checkpoint_path, out_dir, metrics_dir=metrics_dir, samples=samples_path,
                               sampling=params.sample, sources=list(params.prepare.sources),
                               formats=tuple(params.export.formats), gguf_type=params.export.gguf_type,
                               gguf_if_possible=True)
    if result.max_logit_diff is not None and not result.max_logit_diff <= TOLERANCE:
        raise GothicError(f"the exported model's logits differ from gothic's by {result.max_logit_diff:.1e}")
    print(printable(f"export: {result.summary()}"))


if __name__ == "__main__":
    run_main(lambda: main(*sys.argv[1:]), "export")
