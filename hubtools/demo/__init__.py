"""`hubtools demo [TASK]`: a task's whole loop offline on embedded defaults (local hub, packaged models,
bundled sample data), on a CPU. One module per task (`factuality`, `rl_hard`, `geo`), each with `run(...)`;
what they share (the hub, stage lines, the links printed at the end) is in `common`."""

DEMOS = ("factuality", "rl_hard", "geo")
