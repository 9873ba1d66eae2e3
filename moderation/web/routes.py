"""The reviewers' web page and its JSON API, as one FastAPI router to mount into the API app.

Pages (HTML, sign-in required, else a redirect to the sign-in page)::

    GET  {prefix}/            the review page: next item, keyboard-first
    GET  {prefix}/overview    depth per policy, oldest age, my decisions today
    GET  {prefix}/login       POST {prefix}/login       POST {prefix}/logout

API (JSON; 401 when not signed in, 403 for a wrong role or a missing/wrong CSRF token)::

    POST {prefix}/api/next            {queues?, policies?}: claim the next item from the queues
                                      the reviewer may work (or the one already held); a
                                      queue the account may not work: 403
    POST {prefix}/api/decide          {review_id, token, decision, reason_code, add_to_bank}
    POST {prefix}/api/undo            {review_id, token, holding}: take a decision back within
                                      the undo window (``review.undo_window_s``); the item is
                                      leased again (``holding``, the item shown next, goes back)
    POST {prefix}/api/extend          {review_id, token}: renew the lease (another lease_s)
    POST {prefix}/api/skip            {review_id}: give the item back
    POST {prefix}/api/reveal          {review_id}: the reviewer unblurred the image (a critical
                                      item needs one before "allow" or "remove")
    GET  {prefix}/api/image/{id}      the image (the exact bytes that were scored, verified),
                                      only to the reviewer holding its lease; 410 when they are
                                      gone or do not verify
    GET  {prefix}/api/frame/{id}/{n}  a video's n-th sampled frame (the still kept when it was
                                      scored, checked), only to the reviewer holding its lease
    GET  {prefix}/api/overview        my queues, their depth and oldest age (SLA), my decisions
    GET  {prefix}/api/banks/entries   bank entries that are not simply active (quarantined first)
    POST {prefix}/api/banks/entry     {bank, entry_id, action: confirm|disable|quarantine, reason}
    GET  {prefix}/api/admin/stats     admin: queues, decisions per (pseudonymous) reviewer today
    GET  {prefix}/api/admin/in-review admin: items held now, accounts to reassign to
    POST {prefix}/api/admin/requeue   admin: {review_id}, take an item back from its holder
    POST {prefix}/api/admin/reassign  admin: {review_id, username}, lease it to that account
    POST {prefix}/api/admin/release   admin: {reviewer}, take back what that pseudonym holds
    POST {prefix}/api/admin/redeliver admin: retry on_final for decisions whose delivery failed
                                      (each admin action audited: :mod:`moderation.web.
                                      admin_routes`)
    GET  {prefix}/api/wellbeing ...   wellbeing settings, break prompts, exposure
                                      (:mod:`moderation.web.wellbeing_routes`)
    POST {prefix}/api/admin/sessions/end  admin: {username}, end every session of that account

Sessions are server-side (:class:`moderation.pipeline.signin.ReviewerAuth`): sign-out, an admin,
disabling the account, the idle timeout and the absolute lifetime end them, whatever a copied
cookie says. Sign-in is throttled per account and per client address (429 + ``Retry-After``,
the password is not even checked while throttled).

What a reviewer can do is :class:`moderation.pipeline.review_desk.ReviewDesk`: this router
parses requests, calls it and maps its errors. Every state-changing request carries the
session's CSRF token (``X-CSRF-Token`` header or ``csrf`` form field). Errors are RFC 9457 problem
details, like the API's (:mod:`moderation.http.problems`). Images come from the desk as safe PNGs
(no metadata, no exotic formats reach the browser), sent with ``Cache-Control: no-store``.
Every response carries a strict CSP (no inline script or style), ``X-Frame-Options: DENY`` and
``nosniff``.
"""


# No ``from __future__ import annotations`` here: FastAPI must evaluate the ``Depends(...)``
# annotations of the endpoints, which name functions local to build_review_router.

import logging
import math
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from moderation.core.decision import VideoFindings
from moderation.core.review import ReviewDecision, plain_reasons, reason_options
from moderation.core.reviewers import ReviewerSession, Role, allowed_queues
from moderation.exceptions import (
    BankError,
    LoginThrottled,
    ModerationError,
    ReviewAuthError,
    ReviewNotFound,
)
from moderation.http.problems import (
    http_problem,
    moderation_problem,
    status_for,
    validation_problem,
)
from moderation.pipeline.bank_guard import BankGuard
from moderation.pipeline.review_admin import ReviewAdmin
from moderation.pipeline.review_desk import ReviewDesk, VideoView
from moderation.pipeline.signin import ReviewerAuth
from moderation.pipeline.wellbeing import Wellbeing
from moderation.ports import Claim, ReviewStats
from moderation.settings import Settings
from moderation.web.admin_routes import add_admin_routes
from moderation.web.auth import SessionCodec
from moderation.web.context_view import disagreement_view
from moderation.web.wellbeing_routes import add_wellbeing_routes

__all__ = ["build_review_router"]

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
_STATIC = {
    "app.css": "text/css; charset=utf-8",
    "review.js": "text/javascript; charset=utf-8",
    "overview.js": "text/javascript; charset=utf-8",
    "filmstrip.js": "text/javascript; charset=utf-8",
    "context.js": "text/javascript; charset=utf-8",
    "context.css": "text/css; charset=utf-8",
    "wellbeing.js": "text/javascript; charset=utf-8",
    "admin.js": "text/javascript; charset=utf-8",
    "appeal.js": "text/javascript; charset=utf-8",
    "ocr_boxes.js": "text/javascript; charset=utf-8",
}
SESSION_COOKIE = "mr_session"
PRE_COOKIE = "mr_pre"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _secure(response: Response) -> None:
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Cache-Control", "no-store")


def _secure_route(prefix: str) -> type[APIRoute]:
    """A route class that adds the security headers and maps the exception tree to HTTP answers
    (a router cannot install middleware or exception handlers of its own)."""

    class SecureRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            return _wrap(super().get_route_handler(), prefix)

    return SecureRoute


def _wrap(
    original: Callable[[Request], Coroutine[Any, Any, Response]], prefix: str
) -> Callable[[Request], Coroutine[Any, Any, Response]]:

    async def handler(request: Request) -> Response:
        try:
            response = await original(request)
        except ModerationError as exc:
            is_page = request.method == "GET" and "/api/" not in request.url.path
            if status_for(exc) == 401 and is_page:
                response = RedirectResponse(f"{prefix}/login", status_code=303)
            else:
                response = moderation_problem(exc, realm=f'Cookie realm="{prefix}"')
        except RequestValidationError as exc:
            response = validation_problem(exc.errors())
        except HTTPException as exc:
            response = http_problem(exc)
        _secure(response)
        return response

    return handler


@dataclass(frozen=True, slots=True)
class Principal:
    username: str
    role: Role
    pseudonym: str
    session: ReviewerSession
    #: The review queues this account may work (its role's and its grants).
    queues: tuple[str, ...] = ("review",)


class _NextBody(BaseModel):
    policies: list[Annotated[str, Field(max_length=64)]] | None = Field(default=None, max_length=64)
    #: The queues to take the next item from (None: every queue the reviewer may work).
    queues: list[Annotated[str, Field(max_length=64)]] | None = Field(default=None, max_length=16)


class _DecideBody(BaseModel):
    review_id: str = Field(max_length=64)
    token: str = Field(max_length=64)
    decision: ReviewDecision
    reason_code: str | None = Field(default=None, max_length=64)
    #: "Remove and add to bank": the bank to put the image's PDQ hash in once the removal is
    #: final.
    add_to_bank: str | None = Field(default=None, max_length=64)


class _LeaseBody(BaseModel):
    review_id: str = Field(max_length=64)
    token: str = Field(max_length=64)


class _UndoBody(BaseModel):
    review_id: str = Field(max_length=64)
    #: The lease token the decision was made under.
    token: str = Field(max_length=64)
    #: The item the reviewer was given after deciding (handed back to the queue).
    holding: str | None = Field(default=None, max_length=64)


class _ItemBody(BaseModel):
    review_id: str = Field(max_length=64)


class _UserBody(BaseModel):
    username: str = Field(max_length=64)


class _EntryBody(BaseModel):
    bank: str = Field(max_length=64)
    #: A bigint in the database: a larger id is refused here (422), never a database error.
    entry_id: int = Field(ge=0, le=2**63 - 1)
    #: confirm: it stays and acts; disable: taken out of the bank; quarantine: matches to review.
    action: Literal["confirm", "disable", "quarantine"]
    reason: str = Field(default="", max_length=500)


def _video_payload(
    video: VideoFindings, review_id: str, prefix: str, view: VideoView
) -> dict[str, Any]:
    """A video item's filmstrip and timeline for the page: the sampled frames (each a URL served
    only to the lease holder), the flagged segments, the top frame."""
    return {
        "kind": video.kind,
        "duration_s": video.duration_s,
        "frames": [
            {"index": i, "t": t, "url": f"{prefix}/api/frame/{review_id}/{i}"}
            for i, t in enumerate(view.timestamps)
        ],
        "top_index": view.top_index,
        "top_frame_s": video.top_frame_s,
        "segments": [
            {
                "category": s.category,
                "decision": s.decision.value,
                "start_s": s.start_s,
                "end_s": s.end_s,
                "frames": s.frames,
                "top_score": s.top_score,
                "top_frame_s": s.top_frame_s,
            }
            for s in video.segments
        ],
        "held_to_review": list(video.held_to_review),
        "problem": view.problem,
    }


def _claim_payload(claim: Claim, prefix: str, desk: ReviewDesk) -> dict[str, Any]:
    item = claim.item
    deciding = next((c for c in item.verdict.categories if c.category_id == item.category_id), None)
    view = desk.filmstrip(item)
    video = (
        _video_payload(item.verdict.video, item.review_id, prefix, view)
        if view is not None and item.verdict.video is not None
        else None
    )
    image_url = f"{prefix}/api/image/{item.review_id}"
    if view is not None and view.top_index is not None:
        # A video is looked at through its sampled frames: the top one first.
        image_url = f"{prefix}/api/frame/{item.review_id}/{view.top_index}"
    return {
        "review_id": item.review_id,
        "token": claim.lease.token,
        "seconds_left": round(claim.lease.seconds_left(claim.now), 1),
        "job_id": item.job_id,
        "policy_id": item.policy_id,
        "policy_version": item.policy_version,
        "category_id": item.category_id,
        "severity": item.severity.value,
        "score": item.score,
        "thresholds": (
            {"review": deciding.review_threshold, "block": deciding.block_threshold}
            if deciding
            else None
        ),
        "signal": deciding.signal if deciding else None,
        "evidence": ([e.to_dict() for e in deciding.evidence] if deciding else []),
        "scores": item.verdict.scores,
        "explanation": item.verdict.explain(),
        "policy_text": item.policy_text.model_dump(mode="json"),
        "reason_codes": item.reason_codes,
        # Readable labels, this category's first (every one: the page never cuts the list).
        "reasons": [
            {**r.model_dump(mode="json"), "own": r.category_id == item.category_id}
            for r in reason_options(item)
        ],
        # Why it is here, in plain words; and every category's score at a glance.
        "plain_reasons": plain_reasons(item),
        "categories": [
            {
                "category_id": c.category_id,
                "policy_id": c.policy_id,
                "severity": c.severity.value,
                "score": c.score,
                "review_threshold": c.review_threshold,
                "block_threshold": c.block_threshold,
                "deciding": c.category_id == item.category_id and c.policy_id == item.policy_id,
            }
            for c in item.verdict.categories
        ],
        "age_s": round(max(0.0, claim.now - item.created_at), 1),
        "second_review": claim.first is not None and claim.first.disputes is None,
        # A disagreement in the escalation queue: both reviewers' decisions (never on a blind
        # second review).
        "disagreement": disagreement_view(claim),
        "image_url": image_url,
        "video": video,
        "queue": claim.queue,
        # The reviewer already looked at the image unblurred (before an undo, a reload).
        "revealed": desk.revealed(claim.lease.reviewer, item.review_id),
        # Why the scored bytes cannot be shown (then: no image, no "allow"); None when they
        # verify.
        "image_problem": desk.evidence_problem(item),
        "content_pdq": item.content_pdq,
        "content_pdq_quality": item.content_pdq_quality,
        "bank_targets": desk.bank_targets(item),
        # What put it into review (the model, a user's or a trusted flagger's notice).
        "source": item.source.value,
        # A quarantined bank entry's match: the entry a reviewer may confirm or disable.
        "quarantined_entries": [
            {"bank": e.details["bank"], "entry_id": e.details["entry_id"]}
            for c in item.verdict.categories
            for e in c.evidence
            if e.details.get("quarantined") and "entry_id" in e.details
        ],
        # An appeal: the user's statement, the decision appealed and the earlier decisions.
        "appeal": item.appeal.model_dump(mode="json") if item.appeal else None,
        # The uploader's earlier decisions (same tenant only), strike points and action.
        "uploader": desk.uploader_context(item),
        # Earlier decisions on the same image (same tenant only), newest first.
        "same_image": desk.same_image(item),
    }


def build_review_router(
    settings: Settings,
    desk: ReviewDesk,
    auth: ReviewerAuth,
    *,
    prefix: str = "/review",
    bank_guard: BankGuard | None = None,
    wellbeing: Wellbeing | None = None,
    review_admin: ReviewAdmin | None = None,
) -> APIRouter:
    """The reviewers' router over ``desk`` (what reviewers can do) and ``auth`` (sign-in and
    server-side sessions). Mount with ``app.include_router(router)``."""
    review = settings.review
    codec = SessionCodec(
        session_secret=review.session_secret.get_secret_value(),
        pseudonym_secret=review.pseudonym_secret.get_secret_value(),
    )
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    router = APIRouter(prefix=prefix, route_class=_secure_route(prefix), include_in_schema=False)
    secure = settings.secure_cookies  # on in production (the start-up check refuses off)

    def _cookie(response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=prefix,
            httponly=True,
            samesite="strict",
            secure=secure,
        )

    def _forget(response: Response, name: str) -> None:
        response.delete_cookie(name, path=prefix, httponly=True, samesite="strict", secure=secure)

    def principal(request: Request) -> Principal:
        session, account = auth.session(request.cookies.get(SESSION_COOKIE))
        return Principal(
            username=account.username,
            role=account.role,
            pseudonym=codec.pseudonym(account.username),
            session=session,
            queues=allowed_queues(account),
        )

    def csrf_principal(
        request: Request, who: Annotated[Principal, Depends(principal)]
    ) -> Principal:
        codec.check_csrf(who.session.nonce, request.headers.get("x-csrf-token"))
        return who

    def admin(who: Annotated[Principal, Depends(csrf_principal)]) -> Principal:
        if who.role is not Role.ADMIN:
            raise ReviewAuthError("admins only", code="review_forbidden")
        return who

    def admin_read(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.role is not Role.ADMIN:
            raise ReviewAuthError("admins only", code="review_forbidden")
        return who

    def page(request: Request, name: str, who: Principal | None, **extra: Any) -> Response:
        status_code = int(extra.pop("status_code", 200))
        context = {
            "base": prefix,
            "who": who,
            "csrf": codec.csrf_token(who.session.nonce) if who else "",
            **extra,
        }
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    # --- sign in / out --------------------------------------------------------------------

    @router.get("/login")
    def login_form(request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        response = page(request, "login.html", None, login_csrf=codec.csrf_token(nonce), error=None)
        _cookie(response, PRE_COOKIE, nonce, 3600)
        return response

    @router.post("/login")
    def login(
        request: Request,
        username: Annotated[str, Form(max_length=64)],
        password: Annotated[str, Form(max_length=256)],
        csrf: Annotated[str, Form(max_length=128)] = "",
    ) -> Response:
        nonce = request.cookies.get(PRE_COOKIE) or ""
        codec.check_csrf(nonce, csrf if nonce else None)
        client = request.client.host if request.client else "unknown"
        try:
            token, _ = auth.sign_in(username, password, client=client)
        except ReviewAuthError as exc:
            new_nonce = secrets.token_urlsafe(16)
            throttled = isinstance(exc, LoginThrottled)
            response = page(
                request,
                "login.html",
                None,
                login_csrf=codec.csrf_token(new_nonce),
                error=str(exc),
                status_code=429 if throttled else 401,
            )
            if isinstance(exc, LoginThrottled):
                response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
            else:
                response.headers["WWW-Authenticate"] = f'Cookie realm="{prefix}"'
            _cookie(response, PRE_COOKIE, new_nonce, 3600)
            return response
        response = RedirectResponse(f"{prefix}/", status_code=303)
        _cookie(response, SESSION_COOKIE, token, review.session_ttl_s)
        _forget(response, PRE_COOKIE)
        return response

    @router.post("/logout")
    def logout(
        request: Request,
        who: Annotated[Principal, Depends(principal)],
        csrf: Annotated[str, Form(max_length=128)] = "",
    ) -> Response:
        codec.check_csrf(who.session.nonce, csrf)
        auth.sign_out(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse(f"{prefix}/login", status_code=303)
        _forget(response, SESSION_COOKIE)
        return response

    # --- pages ----------------------------------------------------------------------------

    @router.get("/")
    def review_page(request: Request, who: Annotated[Principal, Depends(principal)]) -> Response:
        return page(
            request,
            "review.html",
            who,
            lease_s=int(desk.lease_s),
            undo_s=desk.undo_window_s,
            skip_away_s=desk.skip_away_s,
            wellbeing=(
                wellbeing.settings(who.pseudonym).model_dump(mode="json") if wellbeing else None
            ),
        )

    @router.get("/overview")
    def overview_page(request: Request, who: Annotated[Principal, Depends(principal)]) -> Response:
        return page(request, "overview.html", who)

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in _STATIC:
            raise ReviewNotFound(f"no static file {name}")
        response = Response((_HERE / "static" / name).read_bytes(), media_type=_STATIC[name])
        response.headers["Cache-Control"] = "private, max-age=300"
        return response

    # --- reviewer API ---------------------------------------------------------------------

    @router.post("/api/next")
    def next_item(
        who: Annotated[Principal, Depends(csrf_principal)], body: _NextBody | None = None
    ) -> dict[str, Any]:
        wanted = body.queues if body and body.queues else list(who.queues)
        refused = [q for q in wanted if q not in who.queues]
        if refused:
            raise ReviewAuthError(
                f"you may not work the {', '.join(refused)} queue", code="review_forbidden"
            )
        claim = desk.claim(who.pseudonym, policies=body.policies if body else None, queues=wanted)
        return {"item": _claim_payload(claim, prefix, desk) if claim else None}

    @router.post("/api/decide")
    def decide(
        body: _DecideBody, who: Annotated[Principal, Depends(csrf_principal)]
    ) -> dict[str, Any]:
        done = desk.decide(
            who.pseudonym,
            review_id=body.review_id,
            token=body.token,
            decision=body.decision,
            reason_code=body.reason_code,
            add_to_bank=body.add_to_bank,
        )
        escalated = done.final is None and done.decision is ReviewDecision.ESCALATE
        if done.final is not None:
            status = "final"
        elif done.disagreement:
            status = "disagreement"
        elif escalated:
            status = "escalated"
        else:
            status = "pending_second_review"
        return {
            "status": status,
            "decision": done.decision.value,
            "replay": done.replay,
            "delivered": done.delivered,
            # Seconds the reviewer may still take it back (0: final at once, or escalated:
            # a senior reviewer may have it already).
            "undo_s": desk.undo_window_s if not done.replay and not escalated else 0.0,
        }

    @router.post("/api/extend")
    def extend(
        body: _LeaseBody, who: Annotated[Principal, Depends(csrf_principal)]
    ) -> dict[str, Any]:
        left = desk.extend(who.pseudonym, review_id=body.review_id, token=body.token)
        return {"seconds_left": round(left, 1)}

    @router.post("/api/undo")
    def undo(body: _UndoBody, who: Annotated[Principal, Depends(csrf_principal)]) -> dict[str, Any]:
        claim = desk.undo(
            who.pseudonym, review_id=body.review_id, token=body.token, holding=body.holding
        )
        return {"item": _claim_payload(claim, prefix, desk)}

    @router.post("/api/reveal")
    def reveal(
        body: _ItemBody, who: Annotated[Principal, Depends(csrf_principal)]
    ) -> dict[str, Any]:
        desk.reveal(who.pseudonym, body.review_id)
        return {"revealed": True}

    @router.post("/api/skip")
    def skip(body: _ItemBody, who: Annotated[Principal, Depends(csrf_principal)]) -> dict[str, Any]:
        return {"released": desk.release(body.review_id, reviewer=who.pseudonym)}

    @router.get("/api/image/{review_id}")
    def image(review_id: str, who: Annotated[Principal, Depends(principal)]) -> Response:
        return Response(
            desk.image(who.pseudonym, review_id),
            media_type="image/png",
            headers={"Cache-Control": "no-store, private"},
        )

    @router.get("/api/frame/{review_id}/{index}")
    def frame(
        review_id: str, index: int, who: Annotated[Principal, Depends(principal)]
    ) -> Response:
        return Response(
            desk.frame(who.pseudonym, review_id, index),
            media_type="image/png",
            headers={"Cache-Control": "no-store, private"},
        )

    @router.get("/api/overview")
    def overview(who: Annotated[Principal, Depends(principal)]) -> dict[str, Any]:
        return {
            "me": {
                "username": who.username,
                "role": who.role.value,
                "reviewer": who.pseudonym,
                "queues": list(who.queues),
            },
            "my_decisions_today": desk.decisions_today(who.pseudonym),
            "queues": [
                {
                    "policy_id": s.policy_id,
                    "queue": s.queue,
                    "waiting": s.waiting,
                    "in_review": s.in_review,
                    "oldest_age_s": None if s.oldest_age_s is None else round(s.oldest_age_s, 1),
                }
                for s in desk.stats()
                if s.queue in who.queues
            ],
        }

    # --- admin API ------------------------------------------------------------------------

    @router.get("/api/admin/stats")
    def admin_stats(who: Annotated[Principal, Depends(admin_read)]) -> dict[str, Any]:
        return {
            "queues": [_stats_dict(s) for s in desk.stats()],
            "decisions_today": desk.decisions_by_reviewer(),
            "undelivered": desk.undelivered(),
        }

    def _guard() -> BankGuard:
        if bank_guard is None:
            raise BankError("bank entry states need the database", code="bank_guard_unavailable")
        return bank_guard

    @router.get("/api/banks/entries")
    def bank_entries(
        who: Annotated[Principal, Depends(principal)], bank: str | None = None
    ) -> dict[str, Any]:
        """Bank entries that are not simply active: quarantined first."""
        return {"entries": [s.model_dump(mode="json") for s in _guard().statuses(bank)]}

    @router.post("/api/banks/entry")
    def bank_entry(
        body: _EntryBody, who: Annotated[Principal, Depends(csrf_principal)]
    ) -> dict[str, Any]:
        """Confirm, disable or quarantine one bank entry (every worker follows within
        ``banks.reload_s``)."""
        guard = _guard()
        act = {"confirm": guard.confirm, "disable": guard.disable, "quarantine": guard.quarantine}
        status = act[body.action](body.bank, body.entry_id, by=who.pseudonym, reason=body.reason)
        return {"entry": status.model_dump(mode="json")}

    @router.post("/api/admin/sessions/end")
    def admin_end_sessions(
        body: _UserBody, who: Annotated[Principal, Depends(admin)]
    ) -> dict[str, Any]:
        name = body.username.strip().lower()
        if auth.users.get(name) is None:
            raise ReviewNotFound(f"no reviewer {name!r}", code="review_unknown_user")
        return {"username": name, "ended": auth.end_sessions(name, by=who.pseudonym)}

    add_admin_routes(
        router,
        review_admin
        or ReviewAdmin(desk, users=auth.users, pseudonym=codec.pseudonym, audit=auth.audit),
        admin=admin,
        admin_read=admin_read,
    )
    if wellbeing is not None:
        add_wellbeing_routes(
            router,
            wellbeing,
            principal=principal,
            csrf_principal=csrf_principal,
            admin_read=admin_read,
        )
    return router


def _stats_dict(stats: ReviewStats) -> dict[str, Any]:
    return {
        "policy_id": stats.policy_id,
        "queue": stats.queue,
        "waiting": stats.waiting,
        "in_review": stats.in_review,
        "oldest_age_s": stats.oldest_age_s,
    }
