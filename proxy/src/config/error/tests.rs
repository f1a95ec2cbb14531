use super::line_col;

#[test]
fn key_at_names_section_and_key() {
    let text = "[proxy]\nservice = \"web\"\ncores = \"two\"\n";
    let at = text.find("\"two").unwrap();
    assert_eq!(super::key_at(text, at).as_deref(), Some("[proxy] cores"));
    assert_eq!(super::key_at("x = 1", 4).as_deref(), Some("x"));
    assert_eq!(super::key_at("[proxy]", 1), None);
}

#[test]
fn line_col_counts_from_one_in_characters() {
    let text = "a = 1\n[é]\nbé = 2\n";
    assert_eq!(line_col(text, 0), (1, 1));
    assert_eq!(line_col(text, 4), (1, 5));
    assert_eq!(line_col(text, 6), (2, 1));
    let b = text.find("bé").unwrap();
    assert_eq!(line_col(text, b + "bé".len()), (3, 3));
    assert_eq!(line_col(text, 10_000), (4, 1));
}
