from perspective_unet.table import format_table


def test_plain_table_aligns_numbers_right_and_text_left():
    text = format_table(["organ", "dice"], [["liver", "0.95"], ["aorta", "10.5"]], footer=["mean", "5.7"])
    expected = ["organ  dice", "-----  ----", "liver  0.95", "aorta  10.5", "-----  ----", "mean    5.7"]
    assert text.splitlines() == expected


def test_markdown_table_marks_numeric_columns():
    lines = format_table(["organ", "dice"], [["liver", "95"]], markdown=True).splitlines()
    assert lines == ["| organ | dice |", "|-------|-----:|", "| liver |   95 |"]
