"""Examples printed at the end of ``--help``: the whole tool's (:data:`EXAMPLES`) and one block per command
(:data:`EPILOG`). ``\\b`` keeps click from rewrapping the lines."""

from __future__ import annotations

EXAMPLES = """\b
Examples:
  compleak demo                                  the built-in audit on this host (Fashion-MNIST)
  compleak audit exp.toml -d ssh://pi@board.lan:22 --fail-on 'auc>0.6'
  compleak build exp.toml -o runs/exp            then, stage by stage:
  compleak collect runs/exp -d adb://emulator-5554
  compleak attack runs/exp --families NR,SR
  compleak report runs/exp
  compleak check runs/exp --fail-on 'tpr@0.001>0.01'
  compleak devices list --json
  compleak -v build exp.toml                     show library logs (else RUN/logs/<command>.log)
"""

EPILOG: dict[str, str] = {
    "audit": """\b
Examples:
  compleak audit exp.toml                                   build, collect on this host, attack, report
  compleak audit exp.toml -d ssh://pi@board.lan:22 -d adb://R58M12345
  compleak audit exp.toml --fail-on 'auc_lo>0.55' --fail-on 'tpr@1%>5%'   gate: exit 3 when a row crosses
  compleak audit exp.toml --no-ray --all                    serially, printing every attack row
""",
    "import": """\b
Examples:
  compleak import runs/app --target model.tflite:original --target model_int8.tflite:int8 \\
      --data fashion-mnist --members members.npy
""",
    "collect": """\b
Examples:
  compleak collect runs/exp -d adb://R58M12345              a phone: the native runner, .tflite and .pte
  compleak collect runs/exp -d ssh://pi@board.lan:22 --artifacts tf-target-int8.tflite
  compleak collect runs/exp -d local --perturbations 8      SAMIA's perturbed queries too
""",
    "export": """\b
Examples:
  compleak export runs/exp                                  report/results.csv
  compleak export runs/exp -f json -o - | jq '.[0]'
  compleak export runs/exp --scores -f parquet              per-example scores
""",
    "check": """\b
Examples:
  compleak check runs/exp --fail-on 'auc_lo>0.55'
  compleak check runs/exp --fail-on 'NR,variant=prune-*:tpr@1%>5%' --format github
""",
    "diff": """\b
Examples:
  compleak diff runs/release-1.2 runs/candidate
  compleak diff runs/release-1.2 runs/candidate --fail-on 'delta_auc>0.02' --format json
""",
}
