//! `clickpulse patterns check`: every value is checked against what exists (categories and
//! products of the bundled catalogue, device classes, offers with a picture), and every error of
//! every file is reported in one run with file, line and column.

use std::path::Path;
use std::process::{Command, Output};

fn check(path: &Path) -> (bool, String, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_clickpulse"))
        .args(["patterns", "check"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The 1-based line and column of the first `needle` in `text`.
fn at(text: &str, needle: &str) -> String {
    let (line, l) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in {text}"));
    format!("{}:{}", line + 1, l.find(needle).unwrap() + 1)
}

const SHOES: &str = r#"name = "shoes"
within = "1h"
audience = { device = "Mobile" }

[offer]
default = "offer1"

[[step]]
when = { category = "shoes" }
repeat = 3
distinct = true
"#;

#[test]
fn the_readme_pattern_example_passes_the_check() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("```toml\n# my-shoes.toml\n")
        .expect("the README's pattern example")
        + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("my-shoes.toml");
    std::fs::write(&file, &readme[start..end]).unwrap();
    let (ok, stdout, stderr) = check(&file);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("my-shoes (version"), "{stdout}");
    assert!(
        stdout.contains("Shoppers read: For shoppers on a phone: look at shoes, then "),
        "{stdout}"
    );
    assert!(
        stdout.contains("Offer free-shipping: \"Free shipping on your shoes\""),
        "{stdout}"
    );
    assert!(stdout.contains("1 pattern(s) OK"), "{stdout}");
}

/// An offer that is neither the shop's own nor declared, a declared picture that does not exist
/// and a declared product that is not in the catalogue: all three reported at once.
#[test]
fn offers_must_have_something_the_shop_can_show() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("shoes.toml");
    let text = SHOES.replace(
        "[offer]\ndefault = \"offer1\"\n",
        "[offer]\ndefault = \"free-shipping\"\nrules = [{ when = { gender = \"M\" }, offer = \"ten-off\" }]\n\n\
         [offers.ten-off]\ntitle = \"10% off\"\nimage = \"/images/offers/ten-off.png\"\nproduct = \"VD0\"\n",
    );
    std::fs::write(&file, &text).unwrap();
    let (ok, stdout, stderr) = check(&file);
    assert!(!ok, "{stdout}");
    let f = file.display();
    for (needle, message) in [
        (
            "\"free-shipping\"",
            "offer.default: unknown offer \"free-shipping\"; the shop has no such offer, so its \
             popup would be broken: declare it in [offers.free-shipping]",
        ),
        (
            "\"/images/offers/ten-off.png\"",
            "offers.ten-off.image: unknown picture \"/images/offers/ten-off.png\"",
        ),
        ("\"VD0\"", "offers.ten-off.product: unknown product \"VD0\""),
    ] {
        let expected = format!("error: {f}:{}: {message}", at(&text, needle));
        assert!(stderr.contains(&expected), "{expected}\nin\n{stderr}");
    }
    assert!(stderr.contains("3 error(s) in 1 file(s)"), "{stderr}");
}

#[test]
fn an_unknown_category_is_an_error_with_a_suggestion() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("shoes.toml");
    let text = SHOES.replace(r#"category = "shoes""#, r#"category = "shoez""#);
    std::fs::write(&file, &text).unwrap();
    let (ok, stdout, stderr) = check(&file);
    assert!(!ok, "{stdout}");
    let expected = format!(
        "error: {}:{}: step[0].when.category: unknown category \"shoez\": did you mean \"shoes\"?",
        file.display(),
        at(&text, "\"shoez\"")
    );
    assert!(stderr.contains(&expected), "{expected}\nin\n{stderr}");
    assert!(stderr.contains("1 error(s) in 1 file(s)"), "{stderr}");
    assert!(!stdout.contains("OK"), "{stdout}");
}

#[test]
fn an_unknown_device_class_is_an_error_with_a_suggestion() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("shoes.toml");
    let text = SHOES.replace(r#"device = "Mobile""#, r#"device = ["Tablet", "Mobil"]"#);
    std::fs::write(&file, &text).unwrap();
    let (ok, stdout, stderr) = check(&file);
    assert!(!ok, "{stdout}");
    let expected = format!(
        "error: {}:{}: audience.device: unknown device class \"Mobil\": did you mean \"Mobile\"? \
         (the device classes are Desktop, Mobile, Tablet, Bot, Other)",
        file.display(),
        at(&text, "\"Mobil\"")
    );
    assert!(stderr.contains(&expected), "{expected}\nin\n{stderr}");
    assert!(stderr.contains("1 error(s)"), "{stderr}");
    // Values match ASCII case-insensitively, as conditions do.
    std::fs::write(
        &file,
        SHOES
            .replace("Mobile", "mobile")
            .replace("category = \"shoes\"", "category = \"Shoes\""),
    )
    .unwrap();
    let (ok, _, stderr) = check(&file);
    assert!(ok, "{stderr}");
}

#[test]
fn an_offer_without_a_picture_is_an_error_naming_the_offers() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("shoes.toml");
    let text = SHOES.replace(
        r#"default = "offer1""#,
        "default = \"free-shipping\"\nrules = [{ when = { gender = \"M\" }, offer = \"offer3\" }]",
    );
    std::fs::write(&file, &text).unwrap();
    let (ok, _, stderr) = check(&file);
    assert!(!ok);
    let display = file.display();
    let default = format!(
        "error: {display}:{}: offer.default: unknown offer \"free-shipping\"; the shop has no \
         such offer, so its popup would be broken: declare it in [offers.free-shipping] with a \
         title and a picture, or give one of the shop's own, offer1, offer2",
        at(&text, "\"free-shipping\"")
    );
    assert!(stderr.contains(&default), "{default}\nin\n{stderr}");
    let rule = format!(
        "error: {display}:{}: offer.rules[0].offer: unknown offer \"offer3\": did you mean \"offer1\"?",
        at(&text, "\"offer3\"")
    );
    assert!(stderr.contains(&rule), "{rule}\nin\n{stderr}");
    assert!(stderr.contains("2 error(s)"), "{stderr}");
}

#[test]
fn three_mistakes_in_one_file_and_others_elsewhere_are_reported_in_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let three = SHOES
        .replace(r#"device = "Mobile""#, r#"device = "Mobil""#)
        .replace(r#"default = "offer1""#, r#"default = "free-shipping""#)
        .replace(r#"category = "shoes""#, r#"category = "shoez""#);
    std::fs::write(tmp.path().join("a-three.toml"), &three).unwrap();
    // Compile errors are collected too, not just the first.
    let compile = SHOES
        .replace("name = \"shoes\"", "name = \"b-compile\"")
        .replace("within = \"1h\"", "within = \"soon\"")
        .replace("repeat = 3", "repeat = 3\nloop = true")
        .replace(
            "{ category = \"shoes\" }",
            "{ category = \"shoes\", colour = \"red\" }",
        );
    std::fs::write(tmp.path().join("b-compile.toml"), &compile).unwrap();
    std::fs::write(
        tmp.path().join("c-good.toml"),
        SHOES.replace("name = \"shoes\"", "name = \"c-good\""),
    )
    .unwrap();
    let (ok, stdout, stderr) = check(tmp.path());
    assert!(!ok, "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    let a = tmp.path().join("a-three.toml").display().to_string();
    let b = tmp.path().join("b-compile.toml").display().to_string();
    let expected = [
        format!(
            "error: {a}:{}: audience.device: unknown device class \"Mobil\"",
            at(&three, "\"Mobil\"")
        ),
        format!(
            "error: {a}:{}: offer.default: unknown offer \"free-shipping\"",
            at(&three, "\"free-shipping\"")
        ),
        format!(
            "error: {a}:{}: step[0].when.category: unknown category \"shoez\"",
            at(&three, "\"shoez\"")
        ),
        format!(
            "error: {b}:{}: within: \"soon\" is not a duration",
            at(&compile, "\"soon\"")
        ),
        format!(
            "error: {b}:{}: step[0].loop: the last step earns the offer",
            at(&compile, "[[step]]")
        ),
        format!(
            "error: {b}:{}: step[0].when.colour: unknown field \"colour\"",
            at(&compile, "{ category")
        ),
    ];
    assert_eq!(lines.len(), expected.len() + 1, "{stderr}");
    for (line, expected) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(expected.as_str()),
            "{expected}\nin\n{stderr}"
        );
    }
    assert_eq!(lines.last(), Some(&"6 error(s) in 2 file(s)"), "{stderr}");
    assert!(!stderr.contains(":0:"), "{stderr}");
}

#[test]
fn a_missing_file_is_named_without_a_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("gone.toml");
    let (ok, _, stderr) = check(&file);
    assert!(!ok);
    let expected = format!("error: {}: No such file or directory", file.display());
    assert!(stderr.starts_with(&expected), "{expected}\nin\n{stderr}");
    assert!(!stderr.contains(":0"), "{stderr}");
    assert!(stderr.contains("1 error(s) in 1 file(s)"), "{stderr}");
}

#[test]
fn the_shipped_patterns_pass_the_check() {
    let (ok, stdout, stderr) = check(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/patterns")));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("4 pattern(s) OK"), "{stdout}");
}
