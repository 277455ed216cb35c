"""The jobs service: the one API the UI and the command line call, as `jobs.<name>`.

Everything takes the Database (and Storage where files are involved) explicitly. The service
is split by what a caller does with a job; this package re-exports all of it so callers need
only `from downloader import jobs`:

- create: queue parsed input (fingerprint, rate limit, bulk inserts), find a job to resume
- progress: one job, its counts and rate, the job list, live workers
- details: inside one job: per-product progress, images, failures, rejected rows
- control: pause, resume, cancel, retry, delete
- headers: a job's own request headers (replace; names and hosts for the job page)
- access: who may open a job (its owner and admins; downloader.identity)
- downloader/exports.py: ZIPs and the manifest; downloader/report.py: the Excel report
- downloader/outputs: output options (conversion, marketplace checks) and warning counts
"""

from downloader.errors import JobNotFound, RateLimited
from downloader.exports import (
    job_zip,
    manifest_csv,
    manifest_rows,
    product_folders,
    product_zip,
    product_zip_bytes,
    zip_file_name,
)
from downloader.jobs.access import (
    DownloadRefused,
    job_for,
    job_owners,
    job_to_download,
    require_job,
)
from downloader.jobs.control import cancel_job, delete_job, pause_job, resume_job, retry_failed
from downloader.jobs.create import (
    INSERT_CHUNK,
    check_owner_limits,
    check_rate_limit,
    create_job,
    find_unfinished_job,
    insert_job,
)
from downloader.jobs.details import (
    FAILED_COLUMNS,
    REJECTED_COLUMNS,
    ImageInfo,
    error_summary,
    failed_csv,
    failed_images,
    product_images,
    product_numbers,
    product_progress,
    rejected_csv,
    rejected_rows,
)
from downloader.jobs.headers import (
    HeaderError,
    RequestHeaders,
    parse_header_text,
    request_headers_shown,
    set_request_headers,
)
from downloader.jobs.hosts import slowed_hosts
from downloader.jobs.progress import (
    IMAGE_STATES,
    NO_OWNER,
    PLACE_LABELS,
    JobCounts,
    JobListItem,
    JobSummary,
    get_job,
    job_counts,
    job_place,
    job_summary,
    list_jobs,
    live_workers,
)
from downloader.jobs.webhook_view import WebhookView, webhook_view
from downloader.outputs.checks import warning_counts
from downloader.outputs.profile import OptionError, checks_dict, validate_output_options
from downloader.report import report_bytes, report_file_name, write_report

__all__ = [
    "FAILED_COLUMNS",
    "IMAGE_STATES",
    "INSERT_CHUNK",
    "NO_OWNER",
    "PLACE_LABELS",
    "REJECTED_COLUMNS",
    "DownloadRefused",
    "HeaderError",
    "ImageInfo",
    "JobCounts",
    "JobListItem",
    "JobNotFound",
    "JobSummary",
    "OptionError",
    "RateLimited",
    "RequestHeaders",
    "WebhookView",
    "cancel_job",
    "check_owner_limits",
    "check_rate_limit",
    "checks_dict",
    "create_job",
    "delete_job",
    "error_summary",
    "failed_csv",
    "failed_images",
    "find_unfinished_job",
    "get_job",
    "insert_job",
    "job_counts",
    "job_for",
    "job_owners",
    "job_place",
    "job_summary",
    "job_to_download",
    "job_zip",
    "list_jobs",
    "live_workers",
    "manifest_csv",
    "manifest_rows",
    "parse_header_text",
    "pause_job",
    "product_folders",
    "product_images",
    "product_numbers",
    "product_progress",
    "product_zip",
    "product_zip_bytes",
    "rejected_csv",
    "rejected_rows",
    "report_bytes",
    "report_file_name",
    "request_headers_shown",
    "require_job",
    "resume_job",
    "retry_failed",
    "set_request_headers",
    "slowed_hosts",
    "validate_output_options",
    "warning_counts",
    "webhook_view",
    "write_report",
    "zip_file_name",
]
