"""SGLang's model info, admin key, weight versions and key hygiene, against the fake SGLang server."""

from __future__ import annotations

import pytest

from pacore_agent.backends.sglang import SGLangBackend, SGLangNativeClient, SGLangServerError
from pacore_agent.exceptions import AuthenticationError
from pacore_agent.testing.fake_sglang import FakeSGLangServer
from tests.processes import FAKE_COMMAND, FAKE_ENV

pytestmark = pytest.mark.anyio

KEY = "sk-normal-4f1c9e2a"
ADMIN = "sk-admin-77d0b3e1"


async def test_model_info_falls_back_to_get_model_info_on_old_servers() -> None:
    async with FakeSGLangServer("fake/new") as new, SGLangNativeClient(new.base_url) as client:
        assert (await client.get_model_info())["model_path"] == "fake/new"
    assert new.paths == ["/model_info"]
    async with FakeSGLangServer("fake/old", legacy_model_info=True) as old:
        async with SGLangNativeClient(old.base_url) as client:
            assert (await client.get_model_info())["model_path"] == "fake/old"
            assert (await client.get_model_info())["weight_version"] == "default"
    # The 404 once, then straight to the old path.
    assert old.paths == ["/model_info", "/get_model_info", "/get_model_info"]


async def test_weight_updates_and_flush_send_the_admin_key() -> None:
    async with FakeSGLangServer(api_key=KEY, admin_api_key=ADMIN) as fake:
        async with SGLangBackend.attach(fake.base_url, api_key=KEY, admin_api_key=ADMIN) as backend:
            result = await backend.update_weights_from_disk("/ckpt/step-1", weight_version="step-1")
            assert "Succeeded" in result.message
            await backend.flush_cache()
            [out] = await backend.generate_ids([3, 4], {"max_new_tokens": 3})  # the normal key
            assert out.weight_version == "step-1"
        assert fake.weight_updates[0]["model_path"] == "/ckpt/step-1" and fake.flush_count == 1
        # Without the admin key, SGLang refuses the normal key on its admin endpoints.
        async with SGLangBackend.attach(fake.base_url, api_key=KEY) as backend:
            with pytest.raises(AuthenticationError) as refused:
                await backend.update_weights_from_disk("/ckpt/step-2")
            with pytest.raises(AuthenticationError):
                await backend.flush_cache()
            assert (await backend.get_model_info())["model_path"] == "/ckpt/step-1"
    message = str(refused.value)
    assert refused.value.status_code == 401 and KEY not in message and ADMIN not in message
    assert (
        KEY not in repr(backend) and ADMIN not in repr(backend.server) and ADMIN not in repr(backend.native)
    )


async def test_a_sequence_generated_across_a_weight_update_is_flagged() -> None:
    async with FakeSGLangServer() as fake, SGLangBackend.attach(fake.base_url) as backend:
        [before] = await backend.generate_ids([5, 6], {"max_new_tokens": 8, "ignore_eos": True})
        fake.next_weight_version = "step-2"  # the update lands while the next batch runs
        across = await backend.generate_ids([[5, 6], [7, 8]], {"max_new_tokens": 8, "ignore_eos": True})
        [after] = await backend.generate_ids([5, 6], {"max_new_tokens": 8, "ignore_eos": True})
    assert before.weight_versions == ("default",) and not before.mixed_weights
    assert all(o.weight_versions == ("default", "step-2") and o.mixed_weights for o in across)
    assert all(o.weight_version == "step-2" for o in across)
    assert after.weight_versions == ("step-2",) and not after.mixed_weights


async def test_keys_never_appear_in_launch_errors_or_their_log_tails() -> None:
    backend = SGLangBackend.launch(
        "fake/model",
        command=FAKE_COMMAND,
        env=FAKE_ENV,
        extra_args=["--fail-startup", "3"],
        api_key=KEY,
        admin_api_key=ADMIN,
        startup_timeout=60.0,
        shutdown_timeout=10.0,
    )
    assert "--admin-api-key" in backend.server.argv
    with pytest.raises(SGLangServerError) as died:
        async with backend:
            pass
    error = died.value
    assert "server_args=ServerArgs(" in error.log_tail  # the line that held both keys
    for secret in (KEY, ADMIN):
        assert secret not in str(error) and secret not in error.log_tail and secret not in repr(error)
    assert "api_key='***'" in error.log_tail and "admin_api_key='***'" in error.log_tail
    log = error.log_path
    assert log is not None and KEY in log.read_text()  # the file itself is the server's own
    log.unlink()
