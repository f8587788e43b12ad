//! The Node the JS suites run on: 22 or newer (supabase-js deprecates 20), installed by
//! `.ci/run` from the npm registry into `.ci/node`, required by `tests/run.sh` up front, and
//! what the README and the suites' `engines` say.

const CI_RUN: &str = include_str!("../../.ci/run");
const RUN_SH: &str = include_str!("../run.sh");
const README: &str = include_str!("../../README.md");
const JS_PACKAGE: &str = include_str!("../js/package.json");
const BROWSER_PACKAGE: &str = include_str!("../browser/package.json");

#[test]
fn the_js_suites_run_on_node_22() {
    assert!(
        CI_RUN.contains("npm install --prefix .ci/node") && CI_RUN.contains("node@22"),
        ".ci/run does not install node@22 into .ci/node"
    );
    assert!(
        RUN_SH.contains(r#"export PATH="$PWD/.ci/node/node_modules/.bin:$PATH""#),
        "tests/run.sh does not put .ci/node first on PATH"
    );
    assert!(
        RUN_SH.contains("-lt 22 ]"),
        "tests/run.sh does not require Node 22"
    );
    assert!(
        !RUN_SH.contains("-lt 20 ]"),
        "tests/run.sh still accepts Node 20"
    );
    assert!(README.contains("Needs Rust, Node 22 or newer with npm"));
    for (name, package) in [("tests/js", JS_PACKAGE), ("tests/browser", BROWSER_PACKAGE)] {
        let v: serde_json::Value = serde_json::from_str(package).expect("package.json");
        assert_eq!(v["engines"]["node"], ">=22", "{name}/package.json engines");
    }
}
