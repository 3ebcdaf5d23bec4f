use super::*;
use crate::connectors::mqtt::{MqttSinkConfig, MqttSourceConfig};

/// The seed document's `mqtt-example.yml`, unchanged.
const SEED: &str = include_str!("../../../../examples/cybus/mqtt-example.yml");

fn params(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn seed_params() -> Vec<(String, String)> {
    params(&[
        ("mqttHost", "broker.example"),
        ("mqttUsername", "alice"),
        ("mqttPassword", "pw-never-shown-42"),
    ])
}

fn error_of(text: &str) -> ConfigError {
    parse(text, &seed_params(), &no_env).unwrap_err()
}

#[test]
fn the_seed_file_compiles() {
    assert!(is_commissioning_file(SEED));
    let p = parse(SEED, &seed_params(), &no_env).unwrap();
    let c = &p.connections["mqttConnection"];
    assert_eq!(c.broker.to_vec(), ["mqtts://broker.example:8883"]);
    assert_eq!(c.username.as_deref(), Some("alice"));
    assert_eq!(c.password.as_ref().unwrap().expose(), "pw-never-shown-42");
    assert!(c.tls_verify);
    assert!(p.connections["_internal"].is_embedded());
    let Some(s) = p.sources[0].1.get::<MqttSourceConfig>() else {
        panic!()
    };
    assert_eq!(p.sources[0].0, "temperatureEndpoint");
    assert_eq!(s.topics.to_vec(), ["factory/line1/temperature"]);
    let (name, sink) = &p.sinks[0];
    assert_eq!(name, "temperatureEndpoint-internal");
    let Some(m) = sink.kind.get::<MqttSinkConfig>() else {
        panic!()
    };
    assert_eq!(m.connection, "_internal");
    assert_eq!(
        m.topic.as_ref().unwrap().to_string(),
        "services/mqttconnectiontest/temperatureEndpoint"
    );
    assert!(!format!("{p:?}").contains("pw-never-shown-42"));
}

#[test]
fn parameters_come_from_params_then_the_environment_then_defaults() {
    let e = parse(SEED, &params(&[("mqttHost", "h")]), &no_env).unwrap_err();
    // The first missing one, in the file's order.
    assert_eq!(e.path, "parameters.mqttUsername");
    assert!(e.message.contains("--param mqttUsername=VALUE"), "{e}");
    let env = |k: &str| match k {
        "MQLINK_PARAM_mqttUsername" => Some("bob".to_string()),
        "MQLINK_PARAM_mqttPassword" => Some("x".to_string()),
        _ => None,
    };
    let p = parse(SEED, &params(&[("mqttHost", "h")]), &env).unwrap();
    assert_eq!(
        p.connections["mqttConnection"].username.as_deref(),
        Some("bob")
    );
    let e = parse(SEED, &params(&[("mqttHots", "h")]), &env).unwrap_err();
    assert_eq!(e.path, "--param mqttHots");
    let with_default = SEED.replace(
        "    description: IP address or hostname of the MQTT broker",
        "    default: 10.0.0.1\n    description: IP address",
    );
    let p = parse(&with_default, &[], &env).unwrap();
    assert_eq!(
        p.connections["mqttConnection"].broker.to_vec(),
        ["mqtts://10.0.0.1:8883"]
    );
    let typed = with_default
        .replace("port: 8883", "port: !ref mqttPort")
        .replace(
            "parameters:\n",
            "parameters:\n  mqttPort:\n    type: integer\n    default: 1883\n",
        );
    let p = parse(&typed, &params(&[("mqttPort", "2883")]), &env).unwrap();
    assert_eq!(
        p.connections["mqttConnection"].broker.to_vec(),
        ["mqtts://10.0.0.1:2883"]
    );
    let e = parse(&typed, &params(&[("mqttPort", "many")]), &env).unwrap_err();
    assert_eq!(
        e.to_string(),
        "parameters.mqttPort: --param mqttPort: \"many\" is not an integer"
    );
}

#[test]
fn errors_name_the_resource_and_property_path() {
    let with = |from: &str, to: &str| {
        assert!(SEED.contains(from), "{from}");
        error_of(&SEED.replacen(from, to, 1))
    };
    let e = with("port: 8883", "port: 88830");
    assert_eq!(
        e.path,
        "resources.mqttConnection.properties.connection.port"
    );
    let e = with("scheme: mqtts", "scheme: http");
    assert_eq!(
        e.path,
        "resources.mqttConnection.properties.connection.scheme"
    );
    // Connection properties are a serde struct: an unknown one is named
    // with its path and Connectware's known names.
    let e = with("port: 8883", "prot: 8883");
    assert_eq!(
        e.path,
        "resources.mqttConnection.properties.connection.prot"
    );
    assert!(
        e.message
            .starts_with("unknown property (known: host, port, scheme,"),
        "{e}"
    );
    let e = with("host: !ref mqttHost", "host: !ref mqttHots");
    assert_eq!(
        e.path,
        "resources.mqttConnection.properties.connection.host"
    );
    assert!(e.message.contains("\"mqttHots\" is not a parameter"), "{e}");
    let e = with(
        "topic: factory/line1/temperature",
        "topic: factory/#/temperature",
    );
    assert_eq!(
        e.path,
        "resources.temperatureEndpoint.properties.subscribe.topic"
    );
    let e = with("trustAllCertificates", "trustAllCertificate");
    assert_eq!(
        e.path,
        "resources.mqttConnection.properties.connection.trustAllCertificate"
    );
    let e = with(
        "connection: !ref mqttConnection",
        "connection: !ref temperatureEndpoint",
    );
    assert_eq!(
        e.path,
        "resources.temperatureEndpoint.properties.connection"
    );
    assert!(
        e.message
            .contains("is a Cybus::Endpoint, not a Cybus::Connection"),
        "{e}"
    );
    let e = with(
        "protocol: Mqtt\n      connection:\n",
        "protocol: Opcua\n      connection:\n",
    );
    assert_eq!(e.path, "resources.mqttConnection.properties.protocol");
    let e = with("host: !ref mqttHost", "host: !join mqttHost");
    assert!(e.message.contains("unknown tag !join"), "{e}");
    let e = with(
        "        username: !ref mqttUsername\n",
        "        username: !ref mqttUsername\n        messageBufferWindowMs: 60000\n",
    );
    assert_eq!(
        e.path,
        "resources.mqttConnection.properties.connection.messageBufferWindowMs"
    );
    // The password never appears in an error.
    let e = with(
        "password: !ref mqttPassword",
        "password: [!ref mqttPassword]",
    );
    assert!(!e.to_string().contains("pw-never-shown-42"), "{e}");
}

/// Production files hold users, roles, containers beside the MQTT part:
/// skipped (one warning), and the MQTT part runs as without them.
#[test]
fn other_resource_types_are_skipped() {
    let text = format!(
        "{SEED}\n  influx:\n    type: Cybus::Container\n    properties:\n      image: influxdb\n  admin:\n    type: Cybus::User\n    properties: {{}}\n  role:\n    type: Cybus::Role\n    properties:\n      permissions: []\n"
    );
    let with = parse(&text, &seed_params(), &no_env).unwrap();
    let without = parse(SEED, &seed_params(), &no_env).unwrap();
    let names = |p: &Pipeline| {
        (
            p.connections.keys().cloned().collect::<Vec<_>>(),
            p.sources.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
            p.sinks.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
            p.transforms.keys().cloned().collect::<Vec<_>>(),
        )
    };
    assert_eq!(names(&with), names(&without));
    assert!(!names(&with).1.is_empty());
}

fn strict_error_of(text: &str) -> ConfigError {
    super::parse_with(text, &seed_params(), &no_env, true).unwrap_err()
}

#[test]
fn other_resource_types_are_refused_by_name_when_strict() {
    let error_of = strict_error_of;
    let text = format!(
        "{SEED}\n  influx:\n    type: Cybus::Container\n    properties:\n      image: influxdb\n"
    );
    let e = error_of(&text);
    assert_eq!(e.path, "resources.influx.type");
    assert!(
        e.message
            .starts_with("Cybus::Container is not supported: mqlink runs only the MQTT part"),
        "{e}"
    );
    let text = format!("{SEED}\n  admin:\n    type: Cybus::User\n    properties: {{}}\n");
    assert!(error_of(&text)
        .message
        .starts_with("Cybus::User is not supported"));
}

const MAPPING: &str = r#"
description: wildcards and rules
metadata:
  name: Line One
  version: 1.0.0
  provider: test
parameters:
  far:
    type: string
    default: 127.0.0.1
definitions:
  factor: 2
resources:
  shopfloor:
    type: Cybus::Connection
    properties:
      protocol: Mqtt
      connection: { host: !ref far, port: 1883, clean: false, clientId: line-one }
  machine:
    type: Cybus::Endpoint
    properties:
      protocol: Mqtt
      connection: !ref shopfloor
      topic: machines/m1/temperature
      subscribe: { topic: factory/m1/temperature, qos: 1 }
  enterprise:
    type: Cybus::Endpoint
    properties:
      protocol: Mqtt
      connection: !ref shopfloor
      write: { topic: enterprise/temperature, qos: 2 }
  celsius:
    type: Cybus::Mapping
    properties:
      mappings:
        - subscribe:
            topic: !sub '${Cybus::MqttRoot}/machines/+machine/temperature'
          publish:
            endpoint: !ref enterprise
          rules:
            - transform:
                expression: '{"machine": $context.vars.machine, "value": value * 2}'
        - subscribe:
            - topic: factory/machine1/temperature
            - topic: 'factory/#'
          publish:
            topic: ${Cybus::MqttRoot}/all/$machine
          rules:
            - filter: { expression: 'value > 10' }
"#;

#[test]
fn mappings_compile_with_wildcards_rules_and_internal_topics() {
    let e = parse(MAPPING, &[], &no_env).unwrap_err();
    // The second entry names a wildcard no subscription has.
    assert_eq!(
        e.path,
        "resources.celsius.properties.mappings[1].publish.topic"
    );
    assert!(e.message.contains("wildcard named \"machine\""), "{e}");
    let text = MAPPING.replace("factory/#'", "factory/#machine'");
    let p = parse(&text, &[], &no_env).unwrap();
    let names: Vec<&str> = p.sources.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["celsius-0", "celsius-1", "enterprise", "machine"]);
    let source = |n: &str| {
        let s = &p.sources.iter().find(|(k, _)| k == n).unwrap().1;
        s.get::<MqttSourceConfig>().unwrap().clone()
    };
    let sink = |n: &str| {
        let s = &p.sinks.iter().find(|(k, _)| k == n).unwrap().1.kind;
        s.get::<MqttSinkConfig>().unwrap().clone()
    };
    assert_eq!(
        source("celsius-0").topics.to_vec(),
        ["services/lineone/machines/+/temperature"]
    );
    assert_eq!(source("celsius-0").connection, "_internal");
    assert_eq!(
        source("celsius-1").topics.to_vec(),
        ["factory/machine1/temperature", "factory/#"]
    );
    assert_eq!(
        source("enterprise").topics.to_vec(),
        ["services/lineone/enterprise/set"]
    );
    assert_eq!(
        sink("machine-internal").topic.as_ref().unwrap().to_string(),
        "services/lineone/machines/m1/temperature"
    );
    assert_eq!(
        sink("enterprise-write").topic.as_ref().unwrap().to_string(),
        "enterprise/temperature"
    );
    assert_eq!(sink("enterprise-write").qos, mqlink::QoS::ExactlyOnce);
    assert_eq!(
        sink("celsius-0-publish")
            .topic
            .as_ref()
            .unwrap()
            .to_string(),
        "{stream}"
    );
    assert!(p.transforms.contains_key("celsius-0") && p.transforms.contains_key("celsius-1"));
    assert!(
        !p.transforms.contains_key("machine"),
        "no rules: unmodified"
    );
    let ids: Vec<String> = p.client_ids().into_iter().map(|(_, id)| id).collect();
    assert!(ids.contains(&"line-one-machine".to_string()), "{ids:?}");
    assert!(ids.contains(&"lineone-celsius-0".to_string()), "{ids:?}");
    assert!(!p.connections["shopfloor"].clean_session);

    let e = parse(
        &text.replace("- transform:", "- setContextVars:"),
        &[],
        &no_env,
    )
    .unwrap_err();
    assert_eq!(
        e.path,
        "resources.celsius.properties.mappings[0].rules[0].setContextVars"
    );
    assert!(e.message.contains("not supported by mqlink"), "{e}");
    let e = parse(&text.replace("value * 2}'", "value * }'"), &[], &no_env).unwrap_err();
    assert_eq!(
        e.path,
        "resources.celsius.properties.mappings[0].rules[0].transform.expression"
    );
    let e = parse(
        &text.replace("endpoint: !ref enterprise", "endpoint: !ref shopfloor"),
        &[],
        &no_env,
    )
    .unwrap_err();
    assert_eq!(
        e.path,
        "resources.celsius.properties.mappings[0].publish.endpoint"
    );
}

#[test]
fn not_a_commissioning_file() {
    assert!(!is_commissioning_file(
        "connections:\n  a: {broker: embedded}\n"
    ));
    assert!(!is_commissioning_file(
        "resources:\n  a: {type: AWS::S3::Bucket}\n"
    ));
    assert!(!is_commissioning_file("[not yaml"));
    assert_eq!(service_id("AWS IoT Core Test"), "awsiotcoretest");
}

/// User input: no mutation of a valid file may panic the parser.
#[test]
fn mutated_files_never_panic() {
    let alphabet = b"[]{}:,.\"'#$-_ !\n\t0123456789abcxyz/+\\&";
    let mut rng = fastrand::Rng::with_seed(13);
    for base in [SEED, MAPPING] {
        for _ in 0..1500 {
            let text = testkit::mutate(&mut rng, base, alphabet, 1..6);
            if let Err(e) = parse(&text, &seed_params(), &no_env) {
                assert!(!e.path.is_empty(), "{e}");
            }
        }
    }
}

/// The examples in `examples/cybus/` stay valid.
#[test]
fn the_examples_compile() {
    let seed = include_str!("../../../../examples/cybus/mqtt-example.yml");
    assert_eq!(
        seed, SEED,
        "examples/cybus/mqtt-example.yml is the seed's file"
    );
    parse(seed, &seed_params(), &no_env).unwrap();
    let line = include_str!("../../../../examples/cybus/line-to-enterprise.yml");
    let p = parse(line, &[], &no_env).unwrap();
    assert_eq!(p.transforms.len(), 1);
    let rules = include_str!("../../../../examples/cybus/rules.yml");
    let p = parse(rules, &params(&[("plantHost", "127.0.0.1")]), &no_env).unwrap();
    assert_eq!(p.sources.len(), 3);
}
