"""What `kubetune run` shows of kfp.local's logs: the steps' own output, not kfp.local's JSON dumps."""

from __future__ import annotations

import io

from kubetune.pipeline.local import _StepLogFilter

KFP_LOCAL_LOG = """\
12:00:00.000 - INFO - Executing task 'validate'
12:00:00.000 - INFO - Streamed logs:

    [KFP Executor 2026-11-23 12:00:00,000 INFO]: Looking for component `validate` in --component_module_path `/tmp/x/ephemeral_component.py`
    [KFP Executor 2026-11-23 12:00:00,000 INFO]: Loading KFP component "validate" from /tmp/x/ephemeral_component.py
    [KFP Executor 2026-11-23 12:00:00,000 INFO]: Got executor_input:
    {
        "inputs": {
            "parameterValues": {
                "config": "data: {}"
            }
        },
        "outputs": {}
    }
    config valid; data fingerprint 0123; run r1
    kubetune: error: data.uri: /nowhere.csv not found
    [KFP Executor 2026-11-23 12:00:00,000 INFO]: Wrote executor output file to /tmp/x/executor_output.json
12:00:01.000 - INFO - Task 'validate' finished with status SUCCESS
12:00:01.000 - INFO - Task 'validate' outputs:
    run_id: 'r1'
    classification: ClassificationMetrics( name='classification',
                                           metadata={'confusionMatrix': {'rows': [{'row': [1.0]}]}} )
--------------------------------------------------------------------------------
12:00:01.000 - INFO - Executing task 'preprocess'
"""


def test_filter_keeps_step_output_and_drops_kfp_dumps():
    shown = io.StringIO()
    log = _StepLogFilter(shown)
    for chunk in (KFP_LOCAL_LOG[:100], KFP_LOCAL_LOG[100:777], KFP_LOCAL_LOG[777:]):  # arbitrary write sizes
        log.write(chunk)
    log.flush()
    text = shown.getvalue()
    assert "config valid; data fingerprint 0123; run r1" in text
    assert "Executing task 'validate'" in text and "Executing task 'preprocess'" in text
    assert "finished with status SUCCESS" in text
    for hidden in ("parameterValues", "executor_input", "executor output file", "Looking for component",
                   "Loading KFP component", "confusionMatrix", "run_id: 'r1'", "-----"):
        assert hidden not in text, hidden
    assert log.step_errors == ["data.uri: /nowhere.csv not found"]
