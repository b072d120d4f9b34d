"""MkDocs hook: the site's home page is the README, its `docs/` links made relative to the site."""

from pathlib import Path

from mkdocs.structure.files import File

README = Path(__file__).resolve().parents[1] / "README.md"


def on_files(files, config):
    files.append(File.generated(config, "index.md", content=README.read_text().replace("](docs/", "](")))
    return files
