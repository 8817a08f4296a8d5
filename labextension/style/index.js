import './base.css';
import './offsite.css';
