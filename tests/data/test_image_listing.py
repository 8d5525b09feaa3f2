"""The one dataset listing: what the step plan counts is what the loader reads."""

import pytest

from modules.errors import ConfigError
from modules.data.listing import IMAGE_EXTENSIONS, list_images
from tests.conftest import make_images


def test_lists_supported_images_sorted_skipping_hidden(tmp_path):
    make_images(tmp_path, 3)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "UPPER.JPG").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.webp").write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "thumb.png").write_bytes(b"x")
    names = [path.relative_to(tmp_path).as_posix() for path in list_images(tmp_path)]
    assert names == ["UPPER.JPG", "image_0000.png", "image_0001.png", "image_0002.png", "sub/a.webp"]


def test_every_supported_extension_counts(tmp_path):
    for index, extension in enumerate(IMAGE_EXTENSIONS):
        (tmp_path / f"file{index}{extension}").write_bytes(b"x")
    assert len(list_images(tmp_path)) == len(IMAGE_EXTENSIONS)


def test_missing_folder_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as raised:
        list_images(tmp_path / "nowhere")
    assert raised.value.key == "data.path"
    assert "does not exist" in str(raised.value)


def test_a_missing_relative_folder_names_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as raised:
        list_images("~/pictures")
    assert f"'~/pictures' does not exist (a relative path, looked for in '{tmp_path}'; '~' is not expanded" \
        in str(raised.value)


def test_folder_without_images_names_the_key(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ConfigError) as raised:
        list_images(tmp_path)
    assert raised.value.key == "data.path"
    assert "holds no images" in str(raised.value)


def test_a_file_is_not_a_folder(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"x")
    with pytest.raises(ConfigError, match="not a folder"):
        list_images(path)


def test_the_dataset_loader_reads_the_listed_files(tmp_path):
    """The training data module must use this listing (no second glob)."""
    import ast
    from pathlib import Path

    source = Path(__file__).resolve().parents[2] / "modules" / "data" / "datasets.py"
    if not source.exists():
        pytest.skip("the training data module is not there yet")
    tree = ast.parse(source.read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "modules.data.listing" for alias in node.names}
    assert "list_images" in imported
