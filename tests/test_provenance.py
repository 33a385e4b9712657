"""provenance.git_commit records medzoo's own commit, never the caller's."""

from __future__ import annotations


def _git_repo(folder):  # noqa: ANN001, ANN202
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    run = {"cwd": folder, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **run)
    (folder / "f.txt").write_text("x")
    subprocess.run(["git", "add", "f.txt"], **run)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"], **run
    )
    return subprocess.run(["git", "rev-parse", "HEAD"], text=True, **run).stdout.strip()


def test_git_commit_is_medzoo_s_own_never_the_caller_s_project(tmp_path) -> None:  # noqa: ANN001
    from medzoo.provenance import git_commit

    # medzoo installed into a venv inside a user's own git project: not their commit
    _git_repo(tmp_path / "project")
    installed = tmp_path / "project" / ".venv" / "lib" / "site-packages" / "medzoo"
    installed.mkdir(parents=True)
    assert git_commit(installed) is None
    # medzoo's own checkout (editable install, clone on PYTHONPATH): its commit
    commit = _git_repo(tmp_path / "medzoo-src")
    (tmp_path / "medzoo-src" / "medzoo").mkdir()
    assert git_commit(tmp_path / "medzoo-src" / "medzoo") == commit
