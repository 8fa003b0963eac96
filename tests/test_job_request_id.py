"""A job takes the id its request names (chosen before the acknowledgement), else a new one."""

from __future__ import annotations

from bot.jobs.model import Job, JobRequest, Source, new_job_id


def request(job_id: str | None) -> JobRequest:
    return JobRequest(
        guild_id=1,
        channel_id=2,
        member_id=3,
        role_ids=(),
        source=Source("https://cdn.example/a.png", "a.png"),
        context="{}",
        id=job_id,
    )


def test_a_job_is_recorded_under_the_id_its_request_names() -> None:
    """The id journaled before the acknowledgement is the job's."""
    chosen = new_job_id()
    assert Job.requested(request(chosen), 0.0).id == chosen


def test_a_request_without_an_id_gets_a_new_one_each_time() -> None:
    """Two requests naming no id are two jobs with ids of the same form."""
    first, second = (Job.requested(request(None), 0.0).id for _ in range(2))
    assert first != second and len(first) == len(new_job_id()) == 32
