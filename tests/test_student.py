"""Student versions (utils/student.py) and the exercise checks (utils/exercises.py)."""
import copy

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from utils import exercises, student


def exercise_notebook(answer: str):
    """A three-cell exercise: question, answer (tagged solution), check (tagged check)."""
    return new_notebook(cells=[
        new_markdown_cell("**Exercise.** The variance of the VP marginal for data N(0, 4) at alpha = 0.6."),
        new_code_cell(f"alpha = 0.6\nvar_t = {answer}", metadata={"tags": ["solution"]}),
        new_code_cell("from utils import exercises\n"
                      "exercises.check_close('var_t', var_t, 0.6**2 * 4 + (1 - 0.6**2), "
                      "hint='alpha^2 Var[x0] + sigma^2 with sigma^2 = 1 - alpha^2')",
                      metadata={"tags": ["check"]}),
    ])


def run(nb):
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    return nb


def test_solution_cells_become_placeholders_and_checks_stay():
    nb = exercise_notebook("alpha**2 * 4 + 1 - alpha**2")
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="old")]
    st, cleared = student.student_version(nb, "ex")
    assert cleared == 1
    assert st.cells[1].source == student.CODE_PLACEHOLDER and st.cells[1].outputs == []
    assert st.cells[2].source == nb.cells[2].source and st.cells[0].source == nb.cells[0].source
    assert "alpha**2" in nb.cells[1].source  # the instructor's notebook is untouched


def test_marked_blocks_keep_their_scaffold():
    cell = new_code_cell("def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\nprint(f(1))")
    st, cleared = student.student_version(new_notebook(cells=[cell]))
    assert cleared == 1
    assert st.cells[0].source == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\nprint(f(1))"
    for bad in ("### BEGIN SOLUTION\nx = 1", "x = 1\n### END SOLUTION", "### BEGIN SOLUTION\n### BEGIN SOLUTION"):
        with pytest.raises(ValueError, match="SOLUTION"):
            student.student_version(new_notebook(cells=[new_code_cell(bad)]), "bad")


def test_checks_pass_a_right_answer_and_fail_a_wrong_one():
    """Executed as a student would: the placeholder stops the run, the solution put back passes the
    check, a wrong answer fails it with a message that names the quantity and the hint."""
    from nbclient.exceptions import CellExecutionError

    right = exercise_notebook("alpha**2 * 4 + 1 - alpha**2")
    st, _ = student.student_version(right)
    with pytest.raises(CellExecutionError, match="NotImplementedError"):
        run(st)
    st.cells[1].source = right.cells[1].source  # the solution put back
    out = run(st).cells[2].outputs
    assert "var_t is right" in "".join(o.get("text", "") for o in out)
    wrong, _ = student.student_version(exercise_notebook("alpha * 4 + 1 - alpha"))
    wrong.cells[1].source = exercise_notebook("alpha * 4 + 1 - alpha").cells[1].source
    with pytest.raises(CellExecutionError, match="(?s)var_t is off.*Hint: alpha"):
        run(wrong)


def test_every_chapter_gets_a_student_version(tmp_path):
    written = student.write_student_versions(tmp_path)
    assert len(written) == len(list((student.ROOT / "chapters").glob("*_*.ipynb")))
    for path, cleared in written:
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
        assert all(c.source in (student.CODE_PLACEHOLDER, student.MARKDOWN_PLACEHOLDER) for c in tagged)
        assert cleared >= len(tagged) >= 1, f"{path.name} has no exercise answers"


def test_check_messages():
    exercises.check_close("x", torch.tensor([1.0, 2.0]), [1.0, 2.0])
    with pytest.raises(AssertionError, match=r"x has shape \(3,\); expected shape \(2,\)"):
        exercises.check_close("x", [1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(AssertionError, match=r"x is off at index \(1,\): got 2.5, expected 2"):
        exercises.check_close("x", [1.0, 2.5], [1.0, 2.0])
    with pytest.raises(AssertionError, match="no answer yet"):
        exercises.check_close("x", None, 1.0)
    with pytest.raises(AssertionError, match="non-finite"):
        exercises.check_close("x", [float("nan")], [1.0])
    exercises.check_between("order", 1.97, 1.8, 2.2)
    with pytest.raises(AssertionError, match=r"(?s)order = 1.2 lies outside .*Hint: halve"):
        exercises.check_between("order", 1.2, 1.8, 2.2, hint="halve the step")


def test_a_chapter_student_version_end_to_end(tmp_path):
    """The command on a real chapter (App. C, seconds in the test profile): the student notebook stops
    at the first placeholder; with the chapter's answers put back every check passes; with one wrong
    answer (the left-point sum for Exercise 2's Stratonovich sum) its check fails and says why."""
    import subprocess
    import sys

    from nbclient.exceptions import CellExecutionError

    run_cmd = subprocess.run([sys.executable, "-m", "utils.student", "--only", "C", "--out", str(tmp_path)],
                             cwd=student.ROOT, capture_output=True, text=True, timeout=120)
    assert run_cmd.returncode == 0, run_cmd.stderr[-2000:]
    path = tmp_path / "C_ito_girsanov.ipynb"
    original = nbformat.read(student.ROOT / "chapters" / path.name, as_version=4)
    st = nbformat.read(path, as_version=4)
    answers = [i for i, c in enumerate(original.cells) if "solution" in c.metadata.get("tags", [])]
    assert len(answers) >= 3 and all(st.cells[i].source == student.CODE_PLACEHOLDER for i in answers)
    assert all("check" in st.cells[i + 1].metadata.get("tags", []) for i in answers)   # a check after each answer
    st.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    for c in st.cells:  # the kernel runs where the chapter lives (its set-up cell finds utils/ above it)
        c.metadata.pop("execution", None)

    def execute(nb):
        from nbclient import NotebookClient
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(student.ROOT / "chapters")}}).execute()
        return nb

    with pytest.raises(CellExecutionError, match="NotImplementedError"):
        execute(copy.deepcopy(st))
    for i in answers:
        st.cells[i].source = original.cells[i].source
    done = execute(copy.deepcopy(st))
    passed = "".join(o.get("text", "") for i in answers for o in done.cells[i + 1].outputs)
    assert passed.count("\u2713") >= len(answers)
    strat = next(i for i in answers if "strat =" in original.cells[i].source)
    st.cells[strat].source = "strat = (W[:, :-1] * dW).sum(1)   # the Ito (left-point) sum: wrong here"
    with pytest.raises(CellExecutionError, match="(?s)strat is off.*telescopes"):
        execute(st)


def test_every_answer_cell_is_followed_by_its_check():
    """In every chapter, each code cell tagged solution is followed by a code cell tagged check
    (open explorations have no answer cell, so nothing to check)."""
    for path in sorted((student.ROOT / "chapters").glob("*_*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        for i, c in enumerate(cells):
            if c.cell_type == "code" and "solution" in c.metadata.get("tags", []):
                nxt = next((d for d in cells[i + 1:] if d.cell_type == "code"), None)
                assert nxt is not None and "check" in nxt.metadata.get("tags", []), \
                    f"{path.name} cell {i}: an answer cell without a check cell after it"
