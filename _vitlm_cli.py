"""The `vitlm` console script's entry point, outside the `vitlm` package so that running it does not import that
package first.

`import vitlm` registers every model class with transformers' Auto classes, which means importing torch and
transformers: seconds, and `vitlm --help`, `vitlm presets` or a mistyped option need neither. So this entry point
loads vitlm's light modules (`LIGHT_MODULES`: standard library only at module level) from the package folder by
themselves, then runs `vitlm.cli.main`. A subcommand that works with
models imports the package as it runs (`from .convert import convert`, ...), so its classes are registered exactly
as after `import vitlm`.
`import vitlm` itself is unchanged, and `python -m vitlm.cli` / `from vitlm.cli import main` behave the same, only
with the package imported first.
"""

import importlib
import importlib.util
import pathlib
import sys

# in dependency order: `cli` imports `presets`, the task table's names (`training.tasks`) and the settings' checks
# (`training.arguments`, `retrieval.checks`)
LIGHT_MODULES = ("presets", "training.tasks", "training.arguments", "retrieval.checks", "cli")


def main() -> int:
    if "vitlm" not in sys.modules:  # otherwise the package is there already, and its modules import as usual
        package = pathlib.Path(importlib.util.find_spec("vitlm").origin).parent
        for name in LIGHT_MODULES:
            path = package.joinpath(*name.split(".")).with_suffix(".py")
            spec = importlib.util.spec_from_file_location(f"vitlm.{name}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
    return importlib.import_module("vitlm.cli").main()
