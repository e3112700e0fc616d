"""Online fine-tuning: the OVM target and loss (eq. 5-6), its schedule, the frozen memory, action
proposal, offline data mixing, every method's switches, and a tiny run end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovmse.buffers.episode import EpisodeBatch, init_buffer
from ovmse.cli import main
from ovmse.config import (CqlConfig, FinetuneConfig, LearnerConfig, MemoryConfig, NetworkConfig,
                          TrainConfig)
from ovmse.datasets.locate import SHIPPED as SHIPPED_ROOT
from ovmse.envs import EnvSpec
from ovmse.errors import UserError
from ovmse.learner import (NO_SCHEDULES, OfflineMemory, init_learner, learner_update,
                           qmix_loss, td_targets)
from ovmse.losses import masked_mse
from ovmse.networks.qmix import make_networks
from ovmse.ovm import ovm_loss, ovm_targets
from ovmse.schedules import Schedules
from ovmse.methods import METHODS, finetune_config
from ovmse.runs import read_jsonl
from ovmse.train.driver import train
from ovmse.train.online import OnlineTrainer

SHIPPED = SHIPPED_ROOT / "3m"
TINY_ONLINE = ["--steps", "400", "--num-envs", "4", "--test-interval", "200",
               "--test-episodes", "4", "--final-test-episodes", "8", "--batch-size", "8",
               "--buffer-size", "32", "--length-buckets", "2", "--checkpoint-interval", "200",
               "--lam-anneal-steps", "300", "--probe-episodes", "4", "--no-progress"]


def without_wall(records):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


# --- eq. 5 and 6 by hand ---------------------------------------------------------------------

Q_TOT = jnp.array([[1.0, 2.0]])
TD = jnp.array([[0.5, 3.0]])
MEMORY = jnp.array([[2.0, 1.0]])  # wins the max in the first transition, TD in the second
MASK = jnp.array([[True, True]])


def test_ovm_target_takes_the_larger_of_memory_and_td():
    np.testing.assert_allclose(ovm_targets(TD, MEMORY), [[2.0, 3.0]])


def test_ovm_loss_by_hand():
    # (1 - lam) * mean((1 - 0.5)^2, (2 - 3)^2) + lam * mean((1 - 2)^2, (2 - 3)^2), lam = 0.25
    expected = 0.75 * (0.25 + 1.0) / 2 + 0.25 * (1.0 + 1.0) / 2
    np.testing.assert_allclose(ovm_loss(Q_TOT, TD, MEMORY, 0.25, MASK), expected, rtol=1e-6)


def test_ovm_loss_with_lam_zero_is_the_td_loss_exactly():
    assert float(ovm_loss(Q_TOT, TD, MEMORY, 0.0, MASK)) == float(masked_mse(Q_TOT, TD, MASK))


def test_ovm_loss_ignores_padding():
    mask = jnp.array([[True, False]])
    padded_memory = MEMORY.at[0, 1].set(1e6)
    np.testing.assert_allclose(ovm_loss(Q_TOT, TD, padded_memory, 0.5, mask),
                               0.5 * 0.25 + 0.5 * 1.0, rtol=1e-6)


@pytest.mark.parametrize("lam_end", [0.0, 0.2])
def test_memory_weight_schedule(lam_end):
    cfg = TrainConfig(learner=LearnerConfig(memory=MemoryConfig(lam_end=lam_end,
                                                                lam_anneal_steps=1000)))
    trainer = OnlineTrainer(cfg)
    values = [float(trainer.schedules(t).lam) for t in (0, 500, 1000, 2000)]
    np.testing.assert_allclose(values, [1.0, (1.0 + lam_end) / 2, lam_end, lam_end], atol=1e-7)


# --- the learner with its switches -----------------------------------------------------------

SPEC = EnvSpec("toy", num_agents=2, obs_dim=4, state_dim=3, num_actions=3, episode_limit=5)
NETS = make_networks(SPEC, NetworkConfig(16, 8, 16))


def toy_batch(key, episodes=4):
    k = jax.random.split(key, 4)
    t, n = SPEC.episode_limit, SPEC.num_agents
    lengths = jnp.array([5, 2, 3, 4])[:episodes]
    filled = jnp.arange(t)[:, None] < lengths[None]
    alive = jnp.arange(t + 1)[:, None] <= lengths[None]
    return EpisodeBatch(
        obs=jax.random.normal(k[0], (t + 1, episodes, n, SPEC.obs_dim)) * alive[..., None, None],
        state=jax.random.normal(k[1], (t + 1, episodes, SPEC.state_dim)) * alive[..., None],
        avail=jnp.broadcast_to(alive[..., None, None], (t + 1, episodes, n, 3)),
        actions=(jax.random.randint(k[2], (t, episodes, n), 0, 3) * filled[..., None]).astype(
            jnp.int32),
        rewards=jax.random.uniform(k[3], (t, episodes)) * filled,
        terminated=(jnp.arange(t)[:, None] == lengths[None] - 1) & (lengths[None] < 5),
        truncated=(jnp.arange(t)[:, None] == lengths[None] - 1) & (lengths[None] == 5),
        won=jnp.zeros((t, episodes), bool), filled=filled)


def with_lam(lam: float) -> Schedules:
    return NO_SCHEDULES._replace(lam=jnp.asarray(lam))


def memory_of(key) -> OfflineMemory:
    other = init_learner(key, NETS, LearnerConfig())
    return OfflineMemory(other.params, other.params["agent"])


def test_ovm_learner_loss_is_eq_6_on_its_components():
    cfg = LearnerConfig(memory=MemoryConfig(use_memory=True))
    state = init_learner(jax.random.PRNGKey(0), NETS, cfg)
    batch, memory = toy_batch(jax.random.PRNGKey(1)), memory_of(jax.random.PRNGKey(2))
    loss, m = qmix_loss(state.params, state.target_params, NETS, batch, cfg, memory=memory,
                        schedules=with_lam(0.3))
    # the memory's own Q_tot at the data actions, computed as a separate QMIX network would
    memory_q_tot = qmix_loss(memory.target_params, memory.target_params, NETS, batch,
                             LearnerConfig())[1].q_taken
    np.testing.assert_allclose(m.memory_q, memory_q_tot, rtol=1e-5)
    assert 0.0 <= float(m.memory_wins) <= 1.0
    plain = qmix_loss(state.params, state.target_params, NETS, batch, cfg, memory=memory,
                      schedules=with_lam(0.0))[0]
    np.testing.assert_allclose(plain, m.td_loss, rtol=1e-6)
    assert float(loss) != pytest.approx(float(m.td_loss))


def test_no_gradient_reaches_the_frozen_memory():
    cfg = LearnerConfig(memory=MemoryConfig(use_memory=True), action_proposal=True)
    state = init_learner(jax.random.PRNGKey(0), NETS, cfg)
    batch, memory = toy_batch(jax.random.PRNGKey(1)), memory_of(jax.random.PRNGKey(2))
    grads = jax.grad(lambda mem: qmix_loss(state.params, state.target_params, NETS, batch, cfg,
                                           memory=mem, schedules=with_lam(0.5))[0])(memory)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
    online_grads = jax.grad(lambda p: qmix_loss(
        p, state.target_params, NETS, batch, cfg, memory=memory,
        schedules=with_lam(0.5))[0])(state.params)
    assert any(float(jnp.abs(g).max()) > 0.0 for g in jax.tree.leaves(online_grads))


def sum_mixer_params(params):
    """Mixer parameters that make Q_tot = Q_1 + Q_2 exactly (embed = 2 agents)."""
    mixer = jax.tree.map(jnp.zeros_like, params["mixer"])["params"]
    mixer["hyper_w1_1"]["bias"] = jnp.eye(2).reshape(-1)
    mixer["hyper_b1"]["bias"] = jnp.full((2,), 100.0)
    mixer["hyper_w2_1"]["bias"] = jnp.ones((2,))
    mixer["hyper_v_1"]["bias"] = jnp.full((1,), -200.0)
    return {"params": mixer}


@pytest.mark.parametrize("proposal, avail_row, expected", [
    ([[0.0, 9.0, 0.0], [0.0, 0.0, 9.0]], [True, True, True], 9.0),  # proposal better: 5 + 4
    ([[0.0, 0.0, 9.0], [0.0, 9.0, 0.0]], [True, True, True], 3.0),  # online better: 1 + 2 > 0
    ([[0.0, 9.0, 5.0], [0.0, 0.0, 9.0]], [True, False, True], 4.0),  # proposal limited to avail
])
def test_action_proposal_target_by_hand(proposal, avail_row, expected):
    nets = make_networks(SPEC._replace(num_agents=2), NetworkConfig(16, 2, 16))
    params = init_learner(jax.random.PRNGKey(0), nets, LearnerConfig()).params
    target_params = dict(params, mixer=sum_mixer_params(params))
    q_target = jnp.array([[[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]],
                          [[[1.0, 5.0, 0.0], [2.0, 0.0, 4.0]]]])  # [T+1=2, B=1, N=2, A=3]
    q_online = jnp.array([[[[0.0] * 3] * 2], [[[9.0, 0.0, 0.0], [9.0, 0.0, 0.0]]]])
    q_proposal = jnp.concatenate([jnp.zeros((1, 1, 2, 3)), jnp.array(proposal)[None, None]])
    avail = jnp.ones((2, 1, 2, 3), bool).at[1, 0, 0].set(jnp.array(avail_row))
    batch = EpisodeBatch(obs=jnp.zeros((2, 1, 2, 4)), state=jnp.zeros((2, 1, 3)), avail=avail,
                         actions=jnp.zeros((1, 1, 2), jnp.int32), rewards=jnp.zeros((1, 1)),
                         terminated=jnp.zeros((1, 1), bool), truncated=jnp.ones((1, 1), bool),
                         won=jnp.zeros((1, 1), bool), filled=jnp.ones((1, 1), bool))
    cfg = LearnerConfig(gamma=1.0, td_lambda=0.0, action_proposal=True)
    y = td_targets(nets, target_params, q_online, q_target, batch, cfg, q_proposal)
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("ft") / "pre"
    assert main(["pretrain", "--dataset", str(SHIPPED / "medium"), "--steps", "4",
                 "--test-interval", "2", "--test-episodes", "4", "--final-test-episodes", "4",
                 "--batch-size", "8", "--length-buckets", "2", "--num-samples", "4",
                 "--agent-hidden-dim", "16", "--mixer-embed-dim", "8",
                 "--hypernet-hidden-dim", "16", "--num-seeds", "2", "--no-progress",
                 "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize("algo", METHODS)
def test_every_method_takes_one_update(algo, tiny_pretrained):
    cfg = finetune_config(algo, TrainConfig(finetune=FinetuneConfig(
        checkpoint=str(tiny_pretrained))))
    switches = dict(memory=cfg.learner.memory.use_memory, ap=cfg.learner.action_proposal,
                    cql=cfg.learner.cql.alpha > 0, cal=cfg.learner.cql.calibrated,
                    se=cfg.explore.exploration == "sequential", scratch=not cfg.finetune.checkpoint)
    expected = {"ovmse": dict(memory=True, se=True), "ovm": dict(memory=True), "se": dict(se=True),
                "qmix": dict(scratch=True), "macql": dict(cql=True),
                "macal-ql": dict(cql=True, cal=True), "switch-cql": {},
                "action-proposal": dict(ap=True), "wsrl": {}}[algo]
    assert {k for k, v in switches.items() if v} == set(expected)
    assert cfg.env.map == "3m" and cfg.network.agent_hidden_dim == 16
    spec = EnvSpec("3m", 3, 75, 72, 8, 100)
    nets = make_networks(spec, cfg.network)
    state = init_learner(jax.random.PRNGKey(0), nets, cfg.learner)
    batch = jax.tree.map(lambda x: x[:, :4], init_buffer(spec, 4).data)._replace(
        filled=jnp.zeros((100, 4), bool).at[:3].set(True),
        avail=jnp.ones((101, 4, 3, 8), bool))
    memory = OfflineMemory(state.params, state.params["agent"])
    new, metrics = learner_update(state, batch, nets, cfg.learner, jax.random.PRNGKey(1),
                                  memory, with_lam(0.5))
    assert int(new.updates) == 1 and np.isfinite(float(metrics.loss))


def test_the_trainer_sums_the_terms_its_method_record_names(tiny_pretrained, monkeypatch):
    import dataclasses

    from ovmse import methods
    from ovmse.learner import conservative_term, loss_terms, td_term

    cfg = finetune_config("macql", TrainConfig(finetune=FinetuneConfig(
        checkpoint=str(tiny_pretrained))))
    assert OnlineTrainer(cfg).terms == loss_terms(cfg.learner) == (td_term, conservative_term)
    monkeypatch.setitem(methods.REGISTRY, "macql", dataclasses.replace(
        methods.REGISTRY["macql"], terms="test_learner:_l2_term_added"))
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    terms = OnlineTrainer(cfg).terms
    assert terms[:2] == (td_term, conservative_term) and terms[2].__name__ == "_l2_term"


def test_a_method_setting_given_by_hand_is_refused(tiny_pretrained):
    base = TrainConfig(finetune=FinetuneConfig(checkpoint=str(tiny_pretrained)),
                       learner=LearnerConfig(cql=CqlConfig(alpha=1.0)))
    with pytest.raises(UserError, match="cql is set by the method"):
        finetune_config("ovmse", base)
    with pytest.raises(UserError, match="give --checkpoint"):
        finetune_config("ovmse", TrainConfig())


# --- mixing ratio ----------------------------------------------------------------------------

def test_mixing_ratio_puts_that_many_offline_episodes_in_a_batch():
    cfg = TrainConfig(learner=LearnerConfig(batch_size=8, buffer_size=16),
                      finetune=FinetuneConfig(offline_ratio=0.3, checkpoint="x"))
    trainer = OnlineTrainer(cfg)
    assert trainer.offline_share() == 2  # round(0.3 * 8)
    spec = trainer.spec
    buffer = init_buffer(spec, 16)
    buffer = buffer._replace(size=jnp.int32(16))  # online episodes: all-zero observations
    data = jax.tree.map(lambda x: jnp.ones_like(x[:, :5]), init_buffer(spec, 5).data)
    batch = trainer._draw_batch(buffer, data, jax.random.PRNGKey(0))
    assert batch.obs.shape[1] == 8
    from_data = np.asarray(batch.obs[0, :, 0, 0] == 1.0)
    assert from_data.sum() == 2 and from_data[-2:].all()


# --- end to end ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_ovmse(tiny_pretrained):
    run = tiny_pretrained.parent / "ovmse"
    assert main(["finetune", "--checkpoint", str(tiny_pretrained), "--algo", "ovmse",
                 "--num-seeds", "2", "--offline-ratio", "0.25", *TINY_ONLINE,
                 "--out", str(run)]) == 0
    return run


def test_finetune_cli_logs_memory_weight_and_probe(tiny_ovmse):
    records = read_jsonl(tiny_ovmse / "metrics.jsonl")
    assert [r["lam"] for r in records] == pytest.approx(
        [max(1.0 - r["t_env"] / 300, 0.0) for r in records], abs=1e-6)  # lam_end 0 at 300 steps
    assert records[0]["lam"] == 1.0 and records[-1]["lam"] == 0.0
    assert all(np.isfinite(r["probe_q"]) for r in records)
    config = json.loads((tiny_ovmse / "config.json").read_text())
    assert config["finetune"]["method"] == "ovmse"
    assert config["explore"]["exploration"] == "sequential"
    assert config["learner"]["memory"]["use_memory"] is True
    assert config["finetune"]["dataset"].endswith("medium")
    trained = [r for r in records if r["chunk"] > 0]
    assert trained and all(r["memory_q"] != 0.0 for r in trained)


def test_finetune_starts_from_the_pretrained_policy(tiny_ovmse, tiny_pretrained):
    """Seed i starts from pre-training seed i: its first test equals a greedy test of the
    pre-trained networks on the same keys."""
    from ovmse.config import from_dict
    from ovmse.train.offline import load_pretrained

    cfg = from_dict(TrainConfig, json.loads((tiny_ovmse / "config.json").read_text()))
    trainer = OnlineTrainer(cfg)
    learner, _ = load_pretrained(tiny_pretrained, trainer.spec)
    states = trainer.init_pretrained(trainer.seed_keys(), learner)
    test = trainer.evaluate(states, trainer.test_keys(0), cfg.test_episodes)
    first = [r for r in read_jsonl(tiny_ovmse / "metrics.jsonl") if r["chunk"] == 0]
    assert [r["test_win_rate"] for r in first] == [float(w) for w in test.win_rate]
    assert [r["probe_q"] for r in first] == [float(q) for q in trainer.probe_values(states)]
    for a, b in zip(jax.tree.leaves(states.memory.target_params),
                    jax.tree.leaves(learner.target_params)):
        np.testing.assert_array_equal(a, b)


def test_finetune_resume_gives_the_same_metrics(tiny_ovmse, tmp_path):
    from ovmse.config import from_dict

    cfg = from_dict(TrainConfig, json.loads((tiny_ovmse / "config.json").read_text()))
    run = tmp_path / "paused"
    assert train(cfg, run, progress=False, stop_after_chunks=1) is None
    assert main(["finetune", "--resume", str(run), "--no-progress"]) == 0
    assert without_wall(read_jsonl(run / "metrics.jsonl")) == without_wall(
        read_jsonl(tiny_ovmse / "metrics.jsonl"))


def test_checkpoint_of_another_map_is_refused_by_finetune(tiny_pretrained, capsys):
    assert main(["finetune", "--checkpoint", str(tiny_pretrained), "--map", "2s3z",
                 *TINY_ONLINE]) == 2
    assert "map" in capsys.readouterr().err
