"""The README's Python blocks run verbatim, in order, in a fresh folder with nothing run before, and
the model they train learns: its valid Acc-2 beats always predicting the majority sign."""
import pathlib
import re

import torch

README = pathlib.Path(__file__).parent.parent / "README.md"


def test_readme_python_blocks_run_verbatim_and_learn(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python block"
    monkeypatch.chdir(tmp_path)                 # as in a fresh clone: no runs/ folder yet
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                    # the same numbers on every machine
    namespace = {}
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    labels = namespace["datasets"]["valid"].tensors["label"]
    signed = labels[labels != 0]
    majority = max((signed > 0).float().mean(), (signed <= 0).float().mean()).item()
    assert namespace["result"]["valid"]["acc2_non0"] > majority
