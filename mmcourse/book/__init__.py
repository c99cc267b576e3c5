"""The book's machinery: profiles, recorded results, the one notebook executor, bench, runbook, Colab set-up,
online guards, widgets and figures. The teaching core (``mmcourse.attention`` … ``mmcourse.fusion``) never
imports it."""
