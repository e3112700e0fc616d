import jax
import jax.numpy as jnp
import numpy as np

from ovmse.networks import QMixer


def test_mixer_is_monotonic_in_every_agent_q():
    mixer = QMixer(num_agents=5, embed_dim=8, hypernet_hidden_dim=16)
    key_p, key_q, key_s = jax.random.split(jax.random.PRNGKey(0), 3)
    params = mixer.init(key_p, jnp.zeros((5,)), jnp.zeros((12,)))
    qs = 3.0 * jax.random.normal(key_q, (512, 5))
    states = 2.0 * jax.random.normal(key_s, (512, 12))
    grads = jax.vmap(jax.grad(lambda q, s: mixer.apply(params, q, s)))(qs, states)
    assert grads.shape == (512, 5)
    assert np.all(np.asarray(grads) >= 0.0)
    assert np.mean(np.asarray(grads) > 0.0) > 0.5  # not trivially zero


def test_mixer_output_shape_follows_leading_axes():
    mixer = QMixer(num_agents=3)
    params = mixer.init(jax.random.PRNGKey(1), jnp.zeros((3,)), jnp.zeros((7,)))
    out = mixer.apply(params, jnp.ones((4, 6, 3)), jnp.ones((4, 6, 7)))
    assert out.shape == (4, 6)
