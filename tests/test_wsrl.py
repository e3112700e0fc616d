"""WSRL (wsrl.py): the warm-up is played by the greedy pre-trained policy and no update runs
before it ends; its option is refused for other methods and enters only its cells' keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovmse.cli import main
from ovmse.config import FinetuneConfig, LearnerConfig, NetworkConfig, PretrainConfig, TrainConfig
from ovmse.datasets.locate import SHIPPED
from ovmse.errors import UserError
from ovmse.exploration import greedy_actions
from ovmse.methods import finetune_config
from ovmse.networks.qmix import agent_q_values
from ovmse.schedules import standard
from ovmse.study.cells import FinetuneCell, PretrainCell
from ovmse.train.online import OnlineTrainer
from ovmse.train.offline import load_pretrained
from ovmse.wsrl import schedules

WARMUP = 1000
"""Env steps: at least two iterations of 4 episodes of 3m (at most 100 steps each)."""


def test_warmup_schedule_is_greedy_without_updates_then_standard():
    cfg = TrainConfig(finetune=FinetuneConfig(warmup_steps=WARMUP))
    t = jnp.asarray([0, WARMUP - 1, WARMUP, 5 * WARMUP])
    got, base = schedules(cfg, t), standard(cfg, t)
    np.testing.assert_array_equal(got.epsilon, [0.0, 0.0, base.epsilon[2], base.epsilon[3]])
    np.testing.assert_array_equal(got.learn, [False, False, True, True])
    np.testing.assert_array_equal(got.lam, base.lam)
    assert float(base.epsilon[0]) == 1.0  # the warm-up does replace real exploration


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("wsrl") / "pre"
    assert main(["pretrain", "--dataset", str(SHIPPED / "3m" / "medium"), "--steps", "4",
                 "--test-interval", "2", "--test-episodes", "4", "--final-test-episodes", "4",
                 "--batch-size", "8", "--length-buckets", "2", "--num-samples", "4",
                 "--agent-hidden-dim", "16", "--mixer-embed-dim", "8",
                 "--hypernet-hidden-dim", "16", "--no-progress", "--out", str(run)]) == 0
    return run


def _iterations(tiny_pretrained, warmup_steps):
    """Fine-tune with wsrl one iteration at a time; per iteration (t_env before, t_env after,
    updates taken, agents that explored), and the states after each."""
    cfg = finetune_config("wsrl", TrainConfig(
        steps=2000, num_envs=4, learner=LearnerConfig(batch_size=4, buffer_size=64,
                                                      length_buckets=2),
        finetune=FinetuneConfig(checkpoint=str(tiny_pretrained), warmup_steps=warmup_steps,
                                probe_episodes=2)))
    trainer = OnlineTrainer(cfg)
    learners, _ = load_pretrained(tiny_pretrained, trainer.spec)
    states = trainer.init_pretrained(trainer.seed_keys(), learners)
    learners = jax.device_get(learners)  # the chunks donate the states' buffers
    rows, history = [], []
    while int(states.t_env[0]) < WARMUP + 600:
        before = int(states.t_env[0])
        states, stats = trainer.run_chunk(states, jnp.asarray(before + 1))
        rows.append((before, int(states.t_env[0]), float(stats.updates[0]),
                     float(stats.explored_agents[0])))
        history.append(jax.device_get(states))
    return trainer, learners, rows, history


def test_warmup_is_played_greedily_by_the_pretrained_policy_and_nothing_updates(
        tiny_pretrained):
    trainer, learners, rows, history = _iterations(tiny_pretrained, WARMUP)
    warm = [i for i, (before, after, _, _) in enumerate(rows) if after < WARMUP]
    assert len(warm) >= 2
    for i in warm:
        _, _, updates, explored = rows[i]
        assert updates == 0 and explored == 0
        for got, want in zip(jax.tree.leaves(history[i].learner.params),
                             jax.tree.leaves(learners.params)):
            np.testing.assert_array_equal(got, want)
    # every stored warm-up step is the pre-trained agents' greedy action there
    buffer = history[warm[-1]].buffer
    data = jax.tree.map(lambda x: x[0, :, :int(buffer.size[0])], buffer.data)
    q = agent_q_values(trainer.nets, jax.tree.map(lambda x: x[0], learners.params["agent"]),
                       data)
    greedy = greedy_actions(q[:-1], data.avail[:-1])
    filled = np.asarray(data.filled)
    np.testing.assert_array_equal(np.asarray(data.actions)[filled], np.asarray(greedy)[filled])
    # after it: updates with a full buffer, and exploration
    later = [r for r in rows if r[0] >= WARMUP]
    assert later and all(updates > 0 for _, _, updates, _ in later)
    assert sum(explored for *_, explored in later) > 0


def test_without_warmup_wsrl_updates_from_the_first_iteration(tiny_pretrained):
    _, _, rows, _ = _iterations(tiny_pretrained, 0)
    assert rows[0][2] > 0 and rows[0][3] > 0


def test_warmup_steps_is_refused_for_another_method(tiny_pretrained):
    base = TrainConfig(finetune=FinetuneConfig(checkpoint=str(tiny_pretrained), warmup_steps=10))
    with pytest.raises(UserError, match="warmup_steps is an option of wsrl"):
        finetune_config("ovmse", base)
    assert finetune_config("wsrl", base).finetune.warmup_steps == 10


def test_warmup_steps_enters_only_the_keys_of_wsrl_cells():
    pre = PretrainCell("3m/medium", PretrainConfig(network=NetworkConfig()))

    def key(method, warmup):
        base = TrainConfig(finetune=FinetuneConfig(warmup_steps=warmup))
        return FinetuneCell("3m/medium", method, base, pre).key

    assert key("wsrl", 100) != key("wsrl", 200)
    assert key("ovmse", 100) == key("ovmse", 200)


def test_finetune_cli_runs_wsrl(tiny_pretrained, tmp_path):
    run = tmp_path / "wsrl"
    assert main(["finetune", "--checkpoint", str(tiny_pretrained), "--algo", "wsrl",
                 "--warmup-steps", "100", "--steps", "300", "--num-envs", "4",
                 "--test-interval", "150", "--test-episodes", "4", "--final-test-episodes", "4",
                 "--batch-size", "4", "--buffer-size", "32", "--length-buckets", "2",
                 "--probe-episodes", "2", "--no-progress", "--out", str(run)]) == 0
    assert (run / "summary.json").exists()


def test_a_warmup_as_long_as_the_run_is_warned_about(tiny_pretrained, tmp_path, capsys):
    assert main(["finetune", "--checkpoint", str(tiny_pretrained), "--algo", "wsrl",
                 "--warmup-steps", "300", "--steps", "300", "--num-envs", "4",
                 "--test-interval", "300", "--test-episodes", "4", "--final-test-episodes", "4",
                 "--batch-size", "4", "--buffer-size", "32", "--length-buckets", "2",
                 "--probe-episodes", "2", "--no-progress", "--out", str(tmp_path / "w")]) == 0
    assert "allows no gradient update up to the run's 300 env steps" in capsys.readouterr().err


def test_a_shared_base_gives_each_method_its_own_options_only(tiny_pretrained):
    from ovmse.methods import own_options

    base = TrainConfig(finetune=FinetuneConfig(checkpoint=str(tiny_pretrained),
                                               warmup_steps=10))
    assert finetune_config("ovmse", own_options("ovmse", base)).finetune.warmup_steps == 5000
    assert own_options("wsrl", base) == base
