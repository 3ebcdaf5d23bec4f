"""Runs tests of Eclipse paho's MQTT interoperability suites against a broker.

    python3 run.py client_test|client_test5 HOST PORT [TEST ...]

The suites' own entry points pass their arguments on to unittest (which
refuses `-p`) and set their globals in `__main__`; this sets the same
globals and runs the named tests (all when none is named). Exit 0 when
every test passed. Not part of paho: written for mqlink.
"""

import importlib
import logging
import sys
import unittest

# The suites are imported from the source tree: leave no __pycache__ in it.
sys.dont_write_bytecode = True


def main():
    suite_name, host, port, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    m = importlib.import_module(suite_name)
    prefix = "client_test5/" if suite_name == "client_test5" else ""
    m.host, m.port, m.topic_prefix = host, port, prefix
    m.topics = [prefix + t for t in ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")]
    m.wildtopics = [
        prefix + t for t in ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
    ]
    m.nosubscribe_topics = ("test/nosubscribe",)
    logging.getLogger().setLevel(logging.ERROR)
    loader = unittest.defaultTestLoader
    if names:
        suite = unittest.TestSuite(loader.loadTestsFromName("Test." + n, m) for n in names)
    else:
        suite = loader.loadTestsFromTestCase(m.Test)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
