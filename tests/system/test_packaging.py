"""What can be checked of the container packaging without a Docker engine, and the probe.

compose.yaml must parse and name only variables the services read; the Dockerfile must
copy what exists and run modules that exist; `python -m imagesearch_serving.probe` must answer
as grpc_health_probe does.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from pydantic import AliasChoices

from embed_service.app import EmbedApp
from embed_service.config import EmbedSettings
from search_service.config import SearchSettings
from tests.support.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
MODULES = {"embed_service", "search_service", "imagesearch_serving.probe"}


def variables_read() -> set[str]:
    """Every environment variable the two services' settings read."""
    names = {f"EMBED_{name.upper()}" for name in EmbedSettings.model_fields}
    for field in SearchSettings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices if str(choice).isupper())
    return names


def test_compose_parses_and_names_only_variables_the_services_read() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    known = variables_read()
    assert {"EMBED_TOKENS_FILE", "SEARCH_TOKENS_FILE", "EMBED_TARGET", "DATA_DIR"} <= known
    services = compose["services"]
    assert services["embed"]["deploy"]["replicas"] == 2
    for name, service in services.items():
        unknown = set(service.get("environment", {})) - known
        assert not unknown, f"{name} sets variables no service reads: {unknown}"
        assert service["command"][0] in MODULES
        probe = service["healthcheck"]["test"]
        assert probe[1:4] == ["python", "-m", "imagesearch_serving.probe"]
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"]
    assert "data" in compose["volumes"]
    assert services["search"]["environment"]["EMBED_TARGET"].startswith("dns:///embed:")


def test_the_dockerfile_copies_what_exists_and_runs_a_real_module() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, flags=re.MULTILINE):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source
    # Every folder pyproject.toml installs a package from is in the image.
    copied = {source.split("/")[0] for line in re.findall(r"^COPY (.+)$", text, re.M)
              for source in line.split()[:-1]}  # fmt: skip
    mapped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {path.split("/")[0] for path in mapped["package-dir"].values() if path != "."}
    assert folders <= copied, folders - copied
    assert 'ENTRYPOINT ["python", "-m"]' in text
    (default,) = re.findall(r'^CMD \["([\w.]+)"\]$', text, flags=re.MULTILINE)
    assert default in MODULES
    # torch from its CPU index: PyPI's torch==2.13.0 is a multi-GB CUDA build.
    assert "download.pytorch.org/whl/cpu" in text
    for variable in re.findall(r"\b([A-Z][A-Z_]+)=", text):
        assert variable in variables_read() | {"PYTHONUNBUFFERED"}, variable


def test_every_python_package_in_the_tree_is_one_the_distribution_installs() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for name, folder in setuptools["package-dir"].items():
        if name:  # "" maps the top-level packages, which are found below
            found |= {
                ".".join([name, *init.parent.relative_to(ROOT / folder).parts])
                for init in (ROOT / folder).rglob("__init__.py")
            }
    for top in ("embed_service", "search_service"):
        found |= {".".join(init.parent.relative_to(ROOT).parts)
                  for init in (ROOT / top).rglob("__init__.py")}  # fmt: skip
    assert found <= set(setuptools["packages"]), found - set(setuptools["packages"])


async def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "imagesearch_serving.probe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_probe_answers_like_grpc_health_probe(
    clip_dir: Path, embed_app: EmbedApp
) -> None:
    serving = await probe(embed_app.address, "--service", "imagesearch.v1.EmbedService")
    assert (serving.returncode, serving.stdout.strip()) == (0, f"{embed_app.address}: SERVING")
    # Started, never loaded: its health stays NOT_SERVING.
    loading = EmbedApp(embed_app.settings.model_copy(update={"addr": "127.0.0.1:0"}))
    await loading.start()
    try:
        not_serving = await probe(loading.address)
        assert not_serving.returncode == 1
        assert "NOT_SERVING" in not_serving.stdout
    finally:
        await loading.stop(0)
    nobody = await probe(f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert nobody.returncode == 2
    assert "no answer" in nobody.stderr
