"""Print `name==version` for the declared lower bound of each dependency named on the command line
(read from pyproject.toml), for installing exactly the floors: `pip install $(python .ci/floors.py typer rich)`."""

import re
import sys
import tomllib
from pathlib import Path

requirements = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
floors = {}
for requirement in requirements:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*).*", requirement.strip())
    if m:
        floors[m.group(1).lower().replace("-", "_")] = m.group(2)
missing = [name for name in sys.argv[1:] if name.lower().replace("-", "_") not in floors]
if missing:
    sys.exit(f"no lower bound declared for {', '.join(missing)} in pyproject.toml")
print(" ".join(f"{name}=={floors[name.lower().replace('-', '_')]}" for name in sys.argv[1:]))
