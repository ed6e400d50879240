"""The JupyterLab settings that make a double click open a chapter as a notebook."""
import json

from gflnb import lab


def test_install_sets_the_default_viewer_and_keeps_other_settings(tmp_path):
    dest = lab.settings_path(str(tmp_path))
    dest.parent.mkdir(parents=True)
    dest.write_text(json.dumps({"@jupyterlab/apputils-extension:themes": {"theme": "JupyterLab Dark"},
                                "@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"markdown": "Editor"},
                                                                            "autosave": False}}))
    assert lab.install(str(tmp_path)) == dest
    s = json.loads(dest.read_text())
    dm = s["@jupyterlab/docmanager-extension:plugin"]
    assert dm["defaultViewers"] == {"markdown": "Editor", "python": "Jupytext Notebook"}
    assert dm["autosave"] is False and s["@jupyterlab/apputils-extension:themes"]["theme"] == "JupyterLab Dark"
    assert lab.install(str(tmp_path)) == dest and json.loads(dest.read_text()) == s  # idempotent


def test_the_environment_has_them():
    """make setup installs them into the project's environment (the JupyterLab test relies on it)."""
    s = json.loads(lab.settings_path().read_text())
    assert s["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]["python"] == "Jupytext Notebook"
