"""The progress display: says it is compiling before the first chunk, never runs past its total,
announces the final test."""

from ovmse.progress import advance, announce_final_test, progress_bar


def test_the_bar_says_compiling_then_stops_at_its_total(capsys):
    bar = progress_bar(1000, 0, "step", "3m x2", enabled=True)
    assert "compiling" in str(bar)
    advance(bar, 640)
    advance(bar, 1048)          # the last chunk overshoots by the episodes in flight
    assert bar.n == bar.total == 1000
    bar.close()
    announce_final_test(True, 640, 2)
    assert "final test: 640 greedy episodes per seed x 2 seed(s)" in capsys.readouterr().err
    announce_final_test(False, 640, 2)
    assert capsys.readouterr().err == ""
