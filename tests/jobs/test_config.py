"""One typed config: defaults < file < env < CLI, unknown keys refused."""
import pytest

from jobs.config import IntentFlowConfig, load_config


def test_defaults():
    cfg = load_config(environ={})
    assert cfg == IntentFlowConfig()
    assert cfg.kafka.events_topic == "events" and cfg.scoring.sequence_length == 50
    assert cfg.kafka.transaction_timeout_ms < _broker_max_transaction_timeout_ms()


def _broker_max_transaction_timeout_ms() -> int:
    """The local broker's limit, read from the template deploy/stack.sh renders (sinks fail above it)."""
    from jobs.config import REPO_ROOT
    for line in (REPO_ROOT / "deploy" / "kafka" / "server.properties.tmpl").read_text().splitlines():
        if line.startswith("transaction.max.timeout.ms="):
            return int(line.split("=", 1)[1])
    raise AssertionError("transaction.max.timeout.ms not set in the broker template")


def test_precedence(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[kafka]\nevents_topic = "from-file"\ndlq_topic = "dlq-file"\n[scoring]\nmax_batch = 7\n')
    cfg = load_config(f, ["kafka.events_topic=from-cli"], environ={"INTENTFLOW__KAFKA__DLQ_TOPIC": "dlq-env",
                                                                    "INTENTFLOW__SCORING__MAX_WAIT_MS": "9"})
    assert cfg.kafka.events_topic == "from-cli"
    assert cfg.kafka.dlq_topic == "dlq-env"
    assert cfg.scoring.max_batch == 7 and cfg.scoring.max_wait_ms == 9


def test_unknown_keys_fail():
    with pytest.raises(KeyError):
        load_config(overrides=["kafka.nope=1"], environ={})
    with pytest.raises(KeyError):
        load_config(overrides=["nosection.x=1"], environ={})


def test_config_is_frozen():
    with pytest.raises(Exception):
        IntentFlowConfig().kafka.events_topic = "x"


def test_delivery_guarantee_is_checked_when_the_config_loads():
    import pytest
    from jobs.config import load_config
    assert load_config(overrides=["kafka.delivery_guarantee=at-least-once"], environ={}).kafka.delivery_guarantee \
        == "at-least-once"
    with pytest.raises(ValueError, match="delivery_guarantee"):
        load_config(overrides=["kafka.delivery_guarantee=exactly_once"], environ={})
