from pyramidal_wan.cli import main


def test_demo_writes_mp4_and_gif_and_reports_flops(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and out.with_suffix(".gif").is_file()
    assert "TFLOPs" in printed and "schedule" in printed
