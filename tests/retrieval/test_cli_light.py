"""The retrieval subcommands refuse bad arguments and queries before importing torch, as the other subcommands do."""

import pytest

from tests.test_cli_startup import HEAVY, run_console_script


def test_help_lists_the_retrieval_commands(tmp_path):
    status, out, err, imported = run_console_script("--help", cwd=tmp_path)
    commands = {line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.strip()}
    assert status == 0 and {"embed", "search", "classify-folder"} <= commands, out
    assert not imported & HEAVY


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["embed", "folder"], "required: --out"),
        (["embed", "folder", "--out", "o", "--batch-size", "0"], "expected a positive integer, got '0'"),
        (["embed", "folder", "--out", "o", "--engine", "spark"], "invalid choice: 'spark'"),
        (["search", "index"], "vitlm search: error: give a query text, --image or both"),
        (["search", "index", " "], "vitlm search: error: the query text is empty"),
        (["search", "index", "a\x1bb"], "vitlm search: error: the query text holds control characters (U+001B)"),
        (["search", "index", "x" * 1001], "the query text has 1,001 characters; the limit is 1,000"),
        (["classify-folder", "f", "--labels", " , ", "--out", "p.csv"], "--labels names no class"),
    ],
)
def test_argument_errors_import_neither_torch_nor_transformers(args, fragment, tmp_path):
    status, out, err, imported = run_console_script(*args, cwd=tmp_path)
    assert status == 2 and fragment in err.splitlines()[-1] and "Traceback" not in err, err
    assert not imported & HEAVY, sorted(imported & HEAVY)
